//! `examples/bridge.yaml` is a valid configuration, loaded by bridge's own config loader, and
//! the limits it calls the defaults are the defaults. A test binary of its own: it sets the
//! provider-key variables the example names, which no other test thread may race with.

use std::path::Path;

#[test]
fn the_example_configuration_is_valid_and_its_limits_are_the_defaults_it_says_they_are() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/bridge.yaml");
    // The example names its keys' variables (api_key_env); the loader insists they are set.
    std::env::set_var("ANTHROPIC_API_KEY", "sk-ant-example");
    std::env::set_var("OPENAI_API_KEY", "sk-openai-example");
    std::env::set_var("GEMINI_API_KEY", "gemini-example");
    let c = bridge::config::BridgeConfig::load(Some(&example))
        .unwrap_or_else(|e| panic!("examples/bridge.yaml does not load: {e}"));
    assert_eq!(c.listen.to_string(), "127.0.0.1:8787");
    assert_eq!(c.store, "sqlite://bridge.db");
    assert_eq!(c.spool_dir, Path::new("bridge-spool"));
    let a = c.providers.anthropic.expect("anthropic configured");
    assert_eq!(a.base_url, "https://api.anthropic.com");
    assert_eq!(a.keys.key(0).value, "sk-ant-example");
    let o = c.providers.openai.expect("openai configured");
    assert_eq!(o.base_url, "https://api.openai.com");
    let g = c.providers.gemini.expect("gemini configured");
    assert_eq!(g.base_url, "https://generativelanguage.googleapis.com");
    assert!(c.pricing.price("my-fine-tuned-model").is_some());
    // "Every field is optional; these are the defaults."
    assert_eq!(c.limits, bridge::proxy::Limits::default());
    assert_eq!(
        c.header_read_timeout,
        bridge::config::DEFAULT_HEADER_READ_TIMEOUT
    );
    assert_eq!(c.max_model_labels, 200);
    assert_eq!(c.max_connections, None);
    assert_eq!(
        c.prompt_recording,
        bridge::redact::PromptRecording::Full,
        "the example shows the default"
    );
    assert!(
        !c.retention.is_set(),
        "retention is commented out: kept forever"
    );
    assert_eq!(
        c.control_plane,
        bridge::config::ControlPlaneSettings::default(),
        "the example's control_plane: says the defaults"
    );
}
