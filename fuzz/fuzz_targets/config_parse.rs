//! `config::Config::parse` on any TOML text (relative paths under a base that does not exist,
//! so nothing is read from disk), then what the server derives from it without reading files
//! or secrets: `Config::tenants`, `Config::database_url`, each tenant's `scope_of_sender`
//! and `program_for`, and, when the text overrides jurisdiction rules and names no policy
//! folder, `policy::rules::PolicySet::load` of the embedded policies with those overrides.
//!
//! Property: no panic; a configuration that parses has tenants that parse.
#![no_main]

use consentry::config::Config;
use consentry::policy::rules::PolicySet;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = Config::parse(text, std::path::Path::new("/nonexistent/consentry-fuzz"))
    else {
        return;
    };
    let tenants = config.tenants().expect("a parsed configuration's tenants parse");
    let _ = config.database_url();
    for tenant in config.tenants.iter() {
        let _ = &tenant.id;
    }
    for tenant in tenants.values() {
        let _ = tenant.default_region.code();
        for sender in &tenant.rules.senders {
            let scope = tenant.scope_of_sender(sender);
            let _ = tenant.program_for(&scope);
        }
    }
    if config.policies.dir.is_none() && !config.policies.rules.is_empty() {
        let _ = PolicySet::load(&config.policies);
    }
});
