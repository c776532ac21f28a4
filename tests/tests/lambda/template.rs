//! The SAM template, linted.

use std::process::Command;

use flash_sale_test_support::process::workspace_root;

/// `cfn-lint` on template.yaml (installed from PyPI when missing).
#[test]
fn template_passes_cfn_lint() {
    let cfn_lint = |args: &[&str]| {
        Command::new("cfn-lint")
            .args(args)
            .current_dir(workspace_root())
            .output()
    };
    if cfn_lint(&["--version"]).is_err() {
        let pip = if Command::new("pip3").arg("--version").output().is_ok() {
            "pip3"
        } else {
            "pip"
        };
        let status = Command::new(pip)
            .args([
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "cfn-lint",
            ])
            .status()
            .expect("pip is needed to install cfn-lint");
        assert!(status.success(), "pip install cfn-lint failed");
        let _ = Command::new("pyenv").arg("rehash").status();
    }
    let out = cfn_lint(&["template.yaml"]).expect("running cfn-lint");
    assert!(
        out.status.success(),
        "cfn-lint template.yaml:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
