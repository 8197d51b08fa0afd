//! The policy set: rules read from `policies/*.toml` (shipped copies are embedded in the
//! binary; a configured `policies.dir` replaces them file by file). Pure data once loaded.

use std::path::Path;

use jiff::Timestamp;
use serde::Deserialize;

use crate::config::{ConfigError, PoliciesConfig};
use crate::consent::{ConsentPolicy, Requirement};

const EMBEDDED_CONSENT: &str = include_str!("../../policies/consent.toml");

/// Every rule consentry decides by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySet {
    pub consent: ConsentRules,
}

/// `policies/consent.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentRules {
    pub requirements: Requirements,
    pub opt_out: OptOutRules,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requirements {
    pub marketing: Requirement,
    pub informational: Requirement,
    pub transactional: Requirement,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptOutRules {
    pub revoke_all: bool,
    pub revoke_all_from: Option<Timestamp>,
}

impl ConsentRules {
    /// The consent policy in force at `now`.
    pub fn at(&self, now: Timestamp) -> ConsentPolicy {
        ConsentPolicy {
            marketing: self.requirements.marketing,
            informational: self.requirements.informational,
            transactional: self.requirements.transactional,
            revoke_all: self.opt_out.revoke_all
                || self.opt_out.revoke_all_from.is_some_and(|from| now >= from),
        }
    }
}

impl PolicySet {
    /// Loads the policy files, from `config.dir` where a file exists there, else the shipped
    /// copy; then applies the configuration's overrides.
    pub fn load(config: &PoliciesConfig) -> Result<PolicySet, ConfigError> {
        let mut consent: ConsentRules =
            parse_file(config.dir.as_deref(), "consent.toml", EMBEDDED_CONSENT)?;
        if let Some(revoke_all) = config.revoke_all {
            consent.opt_out.revoke_all = revoke_all;
        }
        Ok(PolicySet { consent })
    }
}

fn parse_file<T: serde::de::DeserializeOwned>(
    dir: Option<&Path>,
    name: &str,
    embedded: &str,
) -> Result<T, ConfigError> {
    let (origin, text) = match dir.map(|dir| dir.join(name)).filter(|path| path.exists()) {
        Some(path) => {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
            (path.display().to_string(), text)
        }
        None => (format!("policies/{name} (embedded)"), embedded.to_owned()),
    };
    toml::from_str(&text).map_err(|error| ConfigError(format!("{origin}: {error}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_policies_load() {
        let set = PolicySet::load(&PoliciesConfig::default()).unwrap();
        let before = set.consent.at("2026-11-28T00:00:00Z".parse().unwrap());
        assert_eq!(before.marketing, Requirement::ExpressWritten);
        assert_eq!(before.informational, Requirement::Express);
        assert_eq!(before.transactional, Requirement::None);
        assert!(!before.revoke_all);
        assert!(
            set.consent
                .at("2027-02-01T00:00:00Z".parse().unwrap())
                .revoke_all
        );
    }

    #[test]
    fn a_policy_file_replaces_the_shipped_one_and_bad_keys_are_named() {
        let folder = tempfile::tempdir().unwrap();
        let config = PoliciesConfig {
            dir: Some(folder.path().to_path_buf()),
            revoke_all: Some(true),
        };
        std::fs::write(
            folder.path().join("consent.toml"),
            "[requirements]\nmarketing = \"express\"\ninformational = \"none\"\ntransactional = \"none\"\n[opt_out]\nrevoke_all = false\n",
        )
        .unwrap();
        let set = PolicySet::load(&config).unwrap();
        let now = "2026-11-28T00:00:00Z".parse().unwrap();
        assert_eq!(set.consent.at(now).marketing, Requirement::Express);
        assert!(
            set.consent.at(now).revoke_all,
            "the configuration overrides the file"
        );

        std::fs::write(
            folder.path().join("consent.toml"),
            "[requirements]\nmarketing = \"maybe\"\n",
        )
        .unwrap();
        let error = PolicySet::load(&config).unwrap_err().to_string();
        assert!(
            error.contains("consent.toml") && error.contains("line 2"),
            "{error}"
        );
    }
}
