//! What the ecosystem around the operator reads: the release workflow passes actionlint.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// NB: shellcheck and pyflakes, which actionlint runs on `run:` scripts when they are on
/// PATH, are switched off: they are not pinned tools here, and the result must not depend
/// on what a machine happens to have installed.
#[test]
fn the_workflows_pass_actionlint() {
    let actionlint = kfo_testenv::binary("actionlint").unwrap();
    let out = Command::new(&actionlint)
        .args(["-no-color", "-shellcheck=", "-pyflakes="])
        .current_dir(root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "actionlint found problems in .github/workflows:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // actionlint also succeeds when it finds nothing to check.
    assert!(
        root().join(".github/workflows/release.yml").is_file(),
        "the release workflow is missing"
    );
}
