//! Every example policy in examples/ is valid (they are what new users copy).

use std::path::Path;

#[test]
fn every_example_config_is_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".yaml") && name != "bridge.yaml" {
            boundary_agent::policy::load(&path).unwrap_or_else(|e| panic!("{e}"));
            checked += 1;
        }
    }
    assert!(
        checked >= 3,
        "expected the three deployment patterns, found {checked}"
    );
}
