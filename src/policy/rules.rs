//! The policy set: rules read from `policies/*.toml` (shipped copies are embedded in the
//! binary; a configured `policies.dir` replaces them file by file). Pure data once loaded.

use std::collections::BTreeMap;
use std::path::Path;

use jiff::Timestamp;
use serde::Deserialize;

use crate::config::{ConfigError, PoliciesConfig};
use crate::consent::{ConsentPolicy, Requirement};
use crate::keywords::{KeywordFile, Keywords};
use crate::policy::jurisdictions::Jurisdictions;
use crate::zones::{DataFile, ZoneTable};

const EMBEDDED_CONSENT: &str = include_str!("../../policies/consent.toml");
const EMBEDDED_KEYWORDS: &str = include_str!("../../policies/keywords.toml");
const EMBEDDED_REPLIES: &str = include_str!("../../policies/replies.toml");
/// The shipped jurisdiction files, by name.
const EMBEDDED_JURISDICTIONS: &[(&str, &str)] = &[
    (
        "au.toml",
        include_str!("../../policies/jurisdictions/au.toml"),
    ),
    (
        "ca.toml",
        include_str!("../../policies/jurisdictions/ca.toml"),
    ),
    (
        "default.toml",
        include_str!("../../policies/jurisdictions/default.toml"),
    ),
    (
        "fr.toml",
        include_str!("../../policies/jurisdictions/fr.toml"),
    ),
    (
        "gb.toml",
        include_str!("../../policies/jurisdictions/gb.toml"),
    ),
    (
        "in.toml",
        include_str!("../../policies/jurisdictions/in.toml"),
    ),
    (
        "us-al.toml",
        include_str!("../../policies/jurisdictions/us-al.toml"),
    ),
    (
        "us-ct.toml",
        include_str!("../../policies/jurisdictions/us-ct.toml"),
    ),
    (
        "us-fl.toml",
        include_str!("../../policies/jurisdictions/us-fl.toml"),
    ),
    (
        "us-ky.toml",
        include_str!("../../policies/jurisdictions/us-ky.toml"),
    ),
    (
        "us-la.toml",
        include_str!("../../policies/jurisdictions/us-la.toml"),
    ),
    (
        "us-ma.toml",
        include_str!("../../policies/jurisdictions/us-ma.toml"),
    ),
    (
        "us-md.toml",
        include_str!("../../policies/jurisdictions/us-md.toml"),
    ),
    (
        "us-mi.toml",
        include_str!("../../policies/jurisdictions/us-mi.toml"),
    ),
    (
        "us-mn.toml",
        include_str!("../../policies/jurisdictions/us-mn.toml"),
    ),
    (
        "us-ms.toml",
        include_str!("../../policies/jurisdictions/us-ms.toml"),
    ),
    (
        "us-nj.toml",
        include_str!("../../policies/jurisdictions/us-nj.toml"),
    ),
    (
        "us-nm.toml",
        include_str!("../../policies/jurisdictions/us-nm.toml"),
    ),
    (
        "us-nv.toml",
        include_str!("../../policies/jurisdictions/us-nv.toml"),
    ),
    (
        "us-ok.toml",
        include_str!("../../policies/jurisdictions/us-ok.toml"),
    ),
    (
        "us-ri.toml",
        include_str!("../../policies/jurisdictions/us-ri.toml"),
    ),
    (
        "us-tx.toml",
        include_str!("../../policies/jurisdictions/us-tx.toml"),
    ),
    (
        "us-wa.toml",
        include_str!("../../policies/jurisdictions/us-wa.toml"),
    ),
    (
        "us.toml",
        include_str!("../../policies/jurisdictions/us.toml"),
    ),
];

/// Every rule consentry decides by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySet {
    pub consent: ConsentRules,
    pub keywords: Keywords,
    pub replies: Replies,
    pub jurisdictions: Jurisdictions,
    pub zones: ZoneTable,
    /// Which rules these are: SHA-256 over the text of every file read and the
    /// configuration's overrides, in the order read; its first 8 bytes in hex. A decision's
    /// basis names it, so an auditor can tell which rules a send was decided under.
    pub version: String,
}

/// `policies/replies.toml`: reply templates per language.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Replies {
    pub languages: BTreeMap<String, Vec<String>>,
    pub templates: BTreeMap<String, Templates>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Templates {
    pub opt_out: String,
    pub opt_in: String,
    pub help: String,
}

/// Which answer to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyTemplate {
    OptOut,
    OptIn,
    Help,
}

/// What fills a template's placeholders.
#[derive(Debug, Clone)]
pub struct ReplyFields<'a> {
    pub program: &'a str,
    pub help_contact: &'a str,
    pub frequency: &'a str,
}

impl Replies {
    /// The language a matched keyword tells, if any.
    pub fn language_of(&self, keyword: &str) -> Option<&str> {
        self.languages
            .iter()
            .find(|(_, words)| words.iter().any(|word| word == keyword))
            .map(|(language, _)| language.as_str())
    }

    /// The answer in `language` (English if there is no template in it).
    pub fn render(
        &self,
        template: ReplyTemplate,
        language: &str,
        fields: &ReplyFields<'_>,
    ) -> String {
        let templates = self
            .templates
            .get(language)
            .or_else(|| self.templates.get("en"))
            .expect("an English template is checked at load");
        let text = match template {
            ReplyTemplate::OptOut => &templates.opt_out,
            ReplyTemplate::OptIn => &templates.opt_in,
            ReplyTemplate::Help => &templates.help,
        };
        text.replace("{program}", fields.program)
            .replace("{help_contact}", fields.help_contact)
            .replace("{frequency}", fields.frequency)
    }
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
        let mut read = Sources::default();
        let mut consent: ConsentRules =
            read.parse(config.dir.as_deref(), "consent.toml", EMBEDDED_CONSENT)?;
        if let Some(revoke_all) = config.revoke_all {
            consent.opt_out.revoke_all = revoke_all;
            read.add(&format!("policies.revoke_all = {revoke_all}"));
        }
        let keyword_file: KeywordFile =
            read.parse(config.dir.as_deref(), "keywords.toml", EMBEDDED_KEYWORDS)?;
        let keywords =
            Keywords::new(&keyword_file).map_err(|e| ConfigError(format!("keywords.toml: {e}")))?;
        let replies: Replies =
            read.parse(config.dir.as_deref(), "replies.toml", EMBEDDED_REPLIES)?;
        if !replies.templates.contains_key("en") {
            return Err(ConfigError("replies.toml: templates.en is required".into()));
        }
        for (language, templates) in &replies.templates {
            for (name, text) in [
                ("opt_out", &templates.opt_out),
                ("opt_in", &templates.opt_in),
                ("help", &templates.help),
            ] {
                let length = text.chars().count();
                if length == 0 || length > 320 {
                    return Err(ConfigError(format!(
                        "replies.toml: templates.{language}.{name} must be 1 to 320 characters"
                    )));
                }
            }
        }
        let overrides = if config.rules.is_empty() {
            None
        } else {
            let mut document = toml::Table::new();
            document.insert(
                "rules".into(),
                toml::Value::Array(
                    config
                        .rules
                        .iter()
                        .cloned()
                        .map(toml::Value::Table)
                        .collect(),
                ),
            );
            Some(
                toml::to_string(&document)
                    .map_err(|e| ConfigError(format!("policies.rules: {e}")))?,
            )
        };
        let jurisdiction_files = jurisdiction_files(config.dir.as_deref())?;
        for (_, text) in &jurisdiction_files {
            read.add(text);
        }
        if let Some(text) = &overrides {
            read.add(text);
        }
        let jurisdictions = Jurisdictions::load_with_overrides(
            &jurisdiction_files,
            overrides
                .as_deref()
                .map(|text| ("the configuration's policies.rules", text)),
        )
        .map_err(ConfigError)?;
        let dir = config.dir.as_deref();
        let (map, regions, overrides) = (
            read.file(dir, "zones/map_data.txt", crate::zones::EMBEDDED_MAP)?,
            read.file(dir, "zones/regions.txt", crate::zones::EMBEDDED_REGIONS)?,
            read.file(dir, "zones/overrides.txt", crate::zones::EMBEDDED_OVERRIDES)?,
        );
        fn file((origin, text): &(String, String)) -> DataFile<'_> {
            DataFile { origin, text }
        }
        let zones =
            ZoneTable::load(file(&map), file(&regions), file(&overrides)).map_err(ConfigError)?;
        Ok(PolicySet {
            consent,
            keywords,
            replies,
            jurisdictions,
            zones,
            version: read.version(),
        })
    }
}

/// What the policy set was read from, digested as it is read, for its version.
struct Sources(ring::digest::Context);

impl Default for Sources {
    fn default() -> Self {
        Sources(ring::digest::Context::new(&ring::digest::SHA256))
    }
}

impl Sources {
    /// One more text, length first so that two texts never read as one.
    fn add(&mut self, text: &str) {
        self.0.update(&(text.len() as u64).to_be_bytes());
        self.0.update(text.as_bytes());
    }

    /// [`read_file`], digested.
    fn file(
        &mut self,
        dir: Option<&Path>,
        name: &str,
        embedded: &str,
    ) -> Result<(String, String), ConfigError> {
        let (origin, text) = read_file(dir, name, embedded)?;
        self.add(&text);
        Ok((origin, text))
    }

    /// A TOML file, read and digested.
    fn parse<T: serde::de::DeserializeOwned>(
        &mut self,
        dir: Option<&Path>,
        name: &str,
        embedded: &str,
    ) -> Result<T, ConfigError> {
        let (origin, text) = self.file(dir, name, embedded)?;
        toml::from_str(&text).map_err(|error| ConfigError(format!("{origin}: {error}")))
    }

    fn version(self) -> String {
        crate::crypto::hex(&self.0.finish().as_ref()[..8])
    }
}

/// The shipped jurisdiction files, with those of `dir/jurisdictions/` replacing them by name
/// or added to them.
fn jurisdiction_files(dir: Option<&Path>) -> Result<Vec<(String, String)>, ConfigError> {
    let mut files: BTreeMap<String, String> = EMBEDDED_JURISDICTIONS
        .iter()
        .map(|(name, text)| {
            (
                format!("policies/jurisdictions/{name} (embedded)"),
                text.to_string(),
            )
        })
        .collect();
    let Some(folder) = dir
        .map(|dir| dir.join("jurisdictions"))
        .filter(|d| d.is_dir())
    else {
        return Ok(files.into_iter().collect());
    };
    let listing = std::fs::read_dir(&folder)
        .map_err(|e| ConfigError(format!("cannot read {}: {e}", folder.display())))?;
    for entry in listing {
        let path = entry
            .map_err(|e| ConfigError(format!("cannot read {}: {e}", folder.display())))?
            .path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        files.retain(|key, _| !key.starts_with(&format!("policies/jurisdictions/{name} ")));
        let text = std::fs::read_to_string(&path)
            .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
        files.insert(path.display().to_string(), text);
    }
    Ok(files.into_iter().collect())
}

/// `dir/name` where it exists, else the shipped copy; with the name errors give it.
fn read_file(
    dir: Option<&Path>,
    name: &str,
    embedded: &str,
) -> Result<(String, String), ConfigError> {
    match dir.map(|dir| dir.join(name)).filter(|path| path.exists()) {
        Some(path) => {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
            Ok((path.display().to_string(), text))
        }
        None => Ok((format!("policies/{name} (embedded)"), embedded.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_names_the_rules_read() {
        let shipped = PolicySet::load(&PoliciesConfig::default()).unwrap();
        assert_eq!(shipped.version.len(), 16);
        assert_eq!(
            PolicySet::load(&PoliciesConfig::default()).unwrap().version,
            shipped.version
        );
        let revoking = PoliciesConfig {
            revoke_all: Some(!shipped.consent.opt_out.revoke_all),
            ..PoliciesConfig::default()
        };
        assert_ne!(PolicySet::load(&revoking).unwrap().version, shipped.version);
    }

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
    fn the_configuration_overrides_a_rule_by_id_or_adds_one() {
        let text = "[[rules]]\nid = \"us-ct-hours\"\ntitle = \"Connecticut, as our counsel reads it\"\nsource = \"counsel memo\"\ncountry = \"US\"\nregions = [\"US-CT\"]\npurposes = [\"marketing\"]\nwindows = { all = \"09:00-21:00\" }\n[[rules]]\nid = \"acme-no-informational-at-night\"\ntitle = \"t\"\nsource = \"internal\"\ncountry = \"US\"\npurposes = [\"informational\"]\nwindows = { all = \"07:00-22:00\" }\n";
        let table: toml::Table = toml::from_str(text).unwrap();
        let rules = match &table["rules"] {
            toml::Value::Array(items) => items
                .iter()
                .map(|item| item.as_table().unwrap().clone())
                .collect(),
            _ => unreachable!(),
        };
        let set = PolicySet::load(&PoliciesConfig {
            rules,
            ..PoliciesConfig::default()
        })
        .unwrap();
        let ct: Vec<_> = set
            .jurisdictions
            .rules()
            .iter()
            .filter(|rule| rule.id == "us-ct-hours")
            .collect();
        assert_eq!(ct.len(), 1);
        assert_eq!(ct[0].source, "counsel memo");
        assert!(
            set.jurisdictions
                .rules()
                .iter()
                .any(|r| r.id == "acme-no-informational-at-night")
        );

        let bad: toml::Table = toml::from_str("id = \"x\"\ncolour = 1").unwrap();
        let error = PolicySet::load(&PoliciesConfig {
            rules: vec![bad],
            ..PoliciesConfig::default()
        })
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("policies.rules") && error.contains("colour"),
            "{error}"
        );
    }

    #[test]
    fn replies_render_in_the_language_of_the_keyword() {
        let set = PolicySet::load(&PoliciesConfig::default()).unwrap();
        let fields = ReplyFields {
            program: "Shop",
            help_contact: "Call 800-555-0100",
            frequency: "Up to 4 msgs/month",
        };
        let language = set.replies.language_of("baja").unwrap();
        assert_eq!(language, "es");
        let text = set.replies.render(ReplyTemplate::OptOut, language, &fields);
        assert!(text.starts_with("Shop: Se ha dado de baja"), "{text}");
        let help = set.replies.render(ReplyTemplate::Help, "de", &fields);
        assert!(help.contains("Call 800-555-0100") && help.contains("Msg & data rates may apply"));
        assert!(help.contains("STOP"));
    }

    #[test]
    fn a_policy_file_replaces_the_shipped_one_and_bad_keys_are_named() {
        let folder = tempfile::tempdir().unwrap();
        let config = PoliciesConfig {
            dir: Some(folder.path().to_path_buf()),
            revoke_all: Some(true),
            rules: Vec::new(),
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

    #[test]
    fn every_shipped_rule_names_its_source() {
        let set = PolicySet::load(&PoliciesConfig::default()).unwrap();
        assert!(set.jurisdictions.rules().len() >= 24);
        for rule in set.jurisdictions.rules() {
            assert!(
                !rule.source.is_empty() && !rule.title.is_empty(),
                "{}",
                rule.id
            );
        }
        assert_eq!(set.jurisdictions.longest_cap_hours(), 24);
    }
}
