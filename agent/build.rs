// The same build facts as the CLI: S3DOCK_COMMIT and S3DOCK_BUILD_DATE for `--version`.
include!("../cli/build.rs");
