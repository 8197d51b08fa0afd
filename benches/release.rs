//! Releasing deferred messages: 100,000 marketing messages deferred at night, released in the
//! morning, each decided again (consent re-read from the ledger, every rule re-checked) and
//! forwarded to the built-in sandbox gateway, on SQLite in a temporary folder.
//!
//! `cargo bench --bench release` (set `RELEASE_BENCH_COUNT` for another count). Prints the
//! time to defer and the release rate.

use std::time::Instant;

use consentry::App;
use consentry::consent::{Action, Level};
use consentry::domain::{
    Body, CanonicalMessage, MessageId, PhoneNumber, Purpose, Region, Scope, Sender,
};
use consentry::flow::send::{self, Delivery, Processed};
use consentry::policy::SenderBounds;
use consentry::state::Clock;
use consentry::store::ConsentRecord;

const CONFIG: &str = r#"
[[tenants]]
id = "bench"
senders = ["+12025550100"]
upstream = "sandbox"
"#;

fn number(index: usize) -> PhoneNumber {
    // +1 212 2EE LLLL: New York, one zone.
    let text = format!("+1212{:03}{:04}", 200 + index / 10_000, index % 10_000);
    PhoneNumber::parse(&text, Region::US).unwrap()
}

fn main() {
    let count: usize = std::env::var("RELEASE_BENCH_COUNT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async move {
        let folder = tempfile::tempdir().unwrap();
        std::fs::write(folder.path().join("c.toml"), format!("data_dir = \"data\"\n{CONFIG}")).unwrap();
        let config = consentry::Config::load(&folder.path().join("c.toml")).unwrap();
        // Wednesday 22:00 in New York: marketing is deferred to 08:00.
        let clock = Clock::starting_at("2026-11-19T03:00:00Z".parse().unwrap());
        let app = App::build_with_clock(config, clock.clone()).await.unwrap();
        let state = app.state();
        let tenant = state.tenants.values().next().unwrap().clone();

        // Written consent for every recipient.
        let started = Instant::now();
        let mut records: Vec<ConsentRecord> = Vec::with_capacity(count as usize);
        for index in 0..count {
                let to = number(index);
                let id = format!("evt_{}", uuid::Uuid::now_v7().simple());
                let sealed = state
                    .keys
                    .seal(format!("consentry/consent/v1\0bench\0{id}").as_bytes(), b"{}", 0)
                    .await
                    .unwrap();
                records.push(ConsentRecord {
                    id,
                    tenant: tenant.id.clone(),
                    recipient_hash: state.numbers.hash(&to),
                    recipient_masked: to.masked(),
                    action: Action::OptIn,
                    level: Some(Level::ExpressWritten),
                    brand: None,
                    campaign: None,
                    purposes: String::new(),
                    method: "import".into(),
                    occurred_at_us: 1_767_225_600_000_000,
                    recorded_at_us: 1_767_225_600_000_000,
                    recorded_by: "bench".into(),
                    external_id: None,
                    idempotency_key: format!("bench:{index}"),
                    key_id: sealed.key_id,
                    evidence: sealed.bytes,
                });
        }
        for chunk in records.chunks(1000) {
            state.store.record_consents(chunk, None).await.unwrap();
        }
        println!("seeded {count} opt-ins in {:.1} s", started.elapsed().as_secs_f64());

        let started = Instant::now();
        for index in 0..count {
            let message = CanonicalMessage {
                id: MessageId::new(),
                tenant: tenant.id.clone(),
                to: number(index),
                from: Sender::parse("+12025550100", Region::US).unwrap(),
                body: Body::parse("Spring sale: 20% off".into()).unwrap(),
                purpose: Purpose::Marketing,
                scope: Scope::tenant_wide(),
                reply: None,
                status_callback: None,
                send_at: None,
                media: Vec::new(),
            };
            let processed =
                send::process(&state, &tenant, &SenderBounds::default(), message, Delivery::Upstream)
                    .await
                    .unwrap();
            assert!(matches!(processed, Processed::Scheduled(_)));
        }
        let deferring = started.elapsed();
        println!(
            "deferred {count} messages in {:.1} s ({:.0}/s)",
            deferring.as_secs_f64(),
            count as f64 / deferring.as_secs_f64()
        );

        clock.set("2026-11-19T13:00:01Z".parse().unwrap());
        let started = Instant::now();
        let released = consentry::scheduler::release_due(&state).await.unwrap();
        let releasing = started.elapsed();
        assert_eq!(released.sent, count, "{released:?}");
        println!(
            "released {count} messages (consent re-checked, sent to the sandbox) in {:.1} s: {:.0} messages/s",
            releasing.as_secs_f64(),
            count as f64 / releasing.as_secs_f64()
        );
    });
}
