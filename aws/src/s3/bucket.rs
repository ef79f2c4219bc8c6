//! Bucket-level settings s3dock checks but never changes (`s3dock doctor`).

use aws_sdk_s3::types::BucketVersioningStatus;

use super::*;

/// Whether the bucket keeps the old versions of overwritten and deleted objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Versioning {
    Enabled,
    /// Was on once: versions kept so far stay, new overwrites are not kept.
    Suspended,
    /// Never turned on.
    Off,
}

impl S3Store {
    /// The bucket's versioning status (GetBucketVersioning). A missing bucket, refused
    /// credentials and an unreachable endpoint map as for every other request.
    pub async fn versioning(&self) -> Result<Versioning, StoreError> {
        let out = self
            .client
            .get_bucket_versioning()
            .bucket(&self.cfg.bucket)
            .send()
            .await
            .map_err(|e| self.ctx.map("reading the versioning of", &format!("s3://{}", self.cfg.bucket), e))?;
        Ok(match out.status() {
            Some(BucketVersioningStatus::Enabled) => Versioning::Enabled,
            Some(BucketVersioningStatus::Suspended) => Versioning::Suspended,
            _ => Versioning::Off,
        })
    }
}
