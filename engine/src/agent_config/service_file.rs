//! What `s3dock deploy --service FILE` reads: a service spec, or the agent's own host file (it
//! has `[[service]]` tables), in which case the entry for (app, env) is taken together with
//! the agent's state directory and host name, so a hand-run deploy shares the agent's lock.

use std::path::{Path, PathBuf};

use s3dock_core::names::{AppName, EnvName};

use super::{ConfigError, HostFile, one_line, read_file};
use crate::deploy::DeploySpec;

/// The service spec a file gives for (app, env), and what an agent configuration adds.
#[derive(Debug, Clone)]
pub struct ServiceFile {
    pub spec: DeploySpec,
    /// The agent configuration's `state_dir` (relative to the file's directory).
    pub state_dir: Option<PathBuf>,
    pub host: Option<String>,
}

impl ServiceFile {
    /// Reads `path` and picks the spec of (app, env); the error names the file and says what
    /// to fix.
    pub fn load(path: &Path, app: &AppName, env: &EnvName) -> Result<ServiceFile, ConfigError> {
        let text = read_file(path, "give a service spec or the agent's configuration")?;
        let err = |message: String| ConfigError { file: path.display().to_string(), message };
        let table: toml::Table =
            toml::from_str(&text).map_err(|e| err(format!("not TOML ({}); fix the file", one_line(e.message()))))?;
        let Some(services) = table.get("service") else {
            let spec = DeploySpec::from_toml(&text).map_err(|e| err(e.to_string()))?;
            if spec.app != *app || spec.env != *env {
                return Err(err(format!(
                    "is the spec of {}/{}, not {app}/{env}; give the spec of {app}/{env}",
                    spec.app, spec.env
                )));
            }
            return Ok(ServiceFile { spec, state_dir: None, host: None });
        };
        if !services.is_array() {
            return Err(err("`service` must be [[service]] tables".into()));
        }
        // The agent's own file, read by the agent's own reader: the same state directory (and
        // so the same service lock) as the agent.
        let host_file = HostFile::parse(&text, path)?;
        let Some(spec) = host_file.service(app, env) else {
            let served: Vec<String> = host_file.services.iter().map(|s| format!("{}/{}", s.app, s.env)).collect();
            let served = if served.is_empty() { "none".to_owned() } else { served.join(", ") };
            return Err(err(format!(
                "has no [[service]] for {app}/{env} (it serves: {served}); add one or give another file"
            )));
        };
        spec.validate().map_err(|e| err(format!("[[service]] {app}/{env}: {e}")))?;
        Ok(ServiceFile {
            spec: spec.clone(),
            state_dir: Some(host_file.state_dir.clone()),
            host: host_file.host.clone(),
        })
    }
}
