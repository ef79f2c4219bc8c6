//! What a command runs with: the global flags, the outside world, and the one function that
//! turns resolved settings into a store and a registry (push, pull and deploy reuse it).

use std::io::Write;
use std::sync::Arc;

use s3dock_aws::sqs::{AccountSource, LazySqsNotifier, SqsConfig};
use s3dock_core::clock::SystemClock;
use s3dock_core::registry::{EventMode, Registry};
use s3dock_core::store::ObjectStore;

use crate::config::Events;
use crate::exit::CliError;
use crate::flags::GlobalArgs;
use crate::output::clean;
use crate::settings::{Environment, Settings, StoreLocation};

/// A command's inputs besides its own arguments.
#[derive(Debug, Clone)]
pub struct Context {
    pub flags: GlobalArgs,
    pub env: Environment,
}

impl Context {
    pub fn new(flags: GlobalArgs, env: Environment) -> Self {
        Context { flags, env }
    }

    /// The resolve step (flags > environment > profile > defaults).
    pub fn settings(&self) -> Result<Settings, CliError> {
        Settings::resolve(&self.flags, &self.env)
    }

    /// Colour for what goes to stdout: a terminal (or `CLICOLOR_FORCE`), no `--json`, no
    /// `NO_COLOR`.
    pub fn style(&self) -> crate::style::Style {
        if self.flags.json {
            return crate::style::Style::plain();
        }
        let terminal = std::io::IsTerminal::is_terminal(&std::io::stdout());
        crate::style::Style::detect(self.env.var("NO_COLOR"), self.env.var("CLICOLOR_FORCE"), terminal)
    }

    /// A progress or info line on stderr, right away (hidden by `-q`).
    pub fn info(&self, message: &str) {
        if !self.flags.quiet {
            let _ = writeln!(std::io::stderr(), "{}", clean(message));
        }
    }

    /// A token cancelled on Ctrl-C or SIGTERM. Only commands that must clean up on the way out
    /// (push: abort its upload) ask for one; the others keep the default, immediate exit.
    pub fn interrupt_token(&self) -> tokio_util::sync::CancellationToken {
        let token = tokio_util::sync::CancellationToken::new();
        let t = token.clone();
        tokio::spawn(async move {
            let term = async {
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(mut s) => {
                        s.recv().await;
                    }
                    Err(_) => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term => {}
            }
            t.cancel();
        });
        token
    }

    /// The store the settings name: a local directory (created on first use) or an S3 bucket.
    /// No request is sent: an unreachable endpoint or refused credentials surface, mapped to
    /// exit code 6, on the first operation.
    pub async fn open_store(&self, settings: &Settings) -> Result<Arc<dyn ObjectStore>, CliError> {
        let location = &settings.store.value;
        let created = matches!(location, StoreLocation::Local(path) if !path.exists());
        let store = location.open().await?;
        if created {
            let url = store.url();
            self.info(&format!("created a new local store at {}", url.strip_prefix("file://").unwrap_or(&url)));
        }
        Ok(store)
    }

    /// The registry over the settings' store, with the system clock, the acting user and the
    /// profile's event mode.
    ///
    /// With `events = "inline"` on an S3 store, promotions and rollbacks notify the registered
    /// agents over SQS themselves, as the promotion-fanout function does for `events =
    /// "lambda"`: the notifier uses the store's region, endpoint and AWS profile, and sends only
    /// to queue URLs of one account (the profile's `account_id`, else STS GetCallerIdentity).
    /// It is lazy: nothing is asked of SQS or STS until a registration with a queue is found,
    /// so promoting an environment no agent serves costs no extra request. A local store has no
    /// agents' queues to reach (an agent on a directory store only reconciles).
    pub async fn open_registry(&self, settings: &Settings) -> Result<Registry, CliError> {
        let store = self.open_store(settings).await?;
        let mode = match settings.events.value {
            Events::Inline => EventMode::Inline,
            Events::Lambda => EventMode::Lambda,
        };
        let registry = Registry::new(store, Arc::new(SystemClock), settings.user.value.clone(), mode);
        match (&settings.store.value, mode) {
            (StoreLocation::S3(cfg), EventMode::Inline) => {
                let sqs = SqsConfig {
                    region: cfg.region.clone(),
                    endpoint: cfg.endpoint.clone(),
                    aws_profile: cfg.aws_profile.clone(),
                    ..SqsConfig::default()
                };
                let account = match &settings.s3.account_id {
                    Some(a) => AccountSource::Given(a.value.clone()),
                    None => AccountSource::CallerIdentity,
                };
                Ok(registry.with_notifier(Arc::new(LazySqsNotifier::new(sqs, account))))
            }
            _ => Ok(registry),
        }
    }
}
