//! Runs deploy/check.py, the static checks of the Dockerfile, the Helm chart
//! and the CI workflows, so that their result is part of the test run. The
//! script's own output names each check and each problem.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn deploy_files_pass_deploy_check_py() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let python = root.join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: scripts/test creates it from tests/requirements.txt",
        python.display()
    );
    let output = Command::new(&python)
        .arg(root.join("deploy/check.py"))
        .current_dir(&root)
        .output()
        .expect("deploy/check.py runs");
    let report = String::from_utf8_lossy(&output.stdout);
    print!("{report}");
    eprint!("{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "deploy/check.py failed:\n{report}");
}
