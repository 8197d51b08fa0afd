//! Where each tenant's deliveries go, and the client that posts them: built once from the
//! configuration (secrets resolved) and kept in the shared state for the outbox worker.

use std::collections::HashMap;
use std::time::Duration;

use crate::config::{ConfigError, OutboxConfig, Secret, Tenant};
use crate::domain::TenantId;
use crate::upstream::{HttpClient, https_client};

/// Where each tenant's deliveries go, and how.
pub struct Webhooks {
    pub(super) targets: HashMap<TenantId, (String, Secret)>,
    /// Per tenant: the token that signs Twilio-style status callbacks.
    pub(super) callback_secrets: HashMap<TenantId, Secret>,
    pub(super) client: HttpClient,
    pub(super) config: OutboxConfig,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks")
            .field("tenants", &self.targets.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Webhooks {
    pub fn new<'a>(
        tenants: impl Iterator<Item = &'a Tenant>,
        config: &OutboxConfig,
    ) -> Result<Self, ConfigError> {
        let mut targets = HashMap::new();
        let mut callback_secrets = HashMap::new();
        for tenant in tenants {
            if let Some(webhook) = &tenant.webhook {
                let secret = webhook
                    .secret
                    .resolve(&format!("tenants[{}].webhook.secret", tenant.id))?;
                targets.insert(tenant.id.clone(), (webhook.url.clone(), secret));
            }
            if let Some(secret) = &tenant.status_callback_secret {
                let secret =
                    secret.resolve(&format!("tenants[{}].status_callback_secret", tenant.id))?;
                callback_secrets.insert(tenant.id.clone(), secret);
            }
        }
        let client = https_client(None, Duration::from_millis(config.timeout_ms))
            .map_err(|e| ConfigError(format!("outbox: {e}")))?;
        Ok(Webhooks {
            targets,
            callback_secrets,
            client,
            config: config.clone(),
        })
    }
}
