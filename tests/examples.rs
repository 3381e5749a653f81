//! The example configs in examples/ are valid (with real keys put in).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use mpvr::keys;

fn check_example(path: &Path, dir: &Path) -> mpvr::config::Config {
    let key = dir.join("private.key");
    fs::write(&key, keys::encode(&keys::generate().unwrap())).unwrap();
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    let public = keys::encode(&keys::public(&keys::generate().unwrap()));
    let text = fs::read_to_string(path).unwrap();
    let mut out = String::new();
    for line in text.lines() {
        let line = if line.starts_with("private_key_file") {
            format!("private_key_file = \"{}\"", key.display())
        } else if line.starts_with("public_key") {
            format!("public_key = \"{public}\"")
        } else {
            line.to_string()
        };
        out.push_str(&line);
        out.push('\n');
    }
    mpvr::config::parse(&out, path).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn every_example_config_is_valid() {
    let dir = std::env::temp_dir().join(format!("mpvr-examples-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let mut n = 0;
    for sub in ["examples/two-hosts", "examples/seed", "examples/exit"] {
        for entry in fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(sub)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let c = check_example(&path, &dir);
                assert!(!c.peers.is_empty(), "{}", path.display());
                n += 1;
            }
        }
    }
    fs::remove_dir_all(&dir).unwrap();
    assert_eq!(n, 7);
}

#[test]
fn status_without_a_daemon_says_so() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mpvr"))
        .args(["status", "-s", "/nonexistent/mpvr.sock"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("no mpvr daemon runs with the control socket /nonexistent/mpvr.sock"), "{err}");
    assert!(err.contains("mpvr run"), "{err}");
}

#[test]
fn completions_and_the_manual_page_are_generated() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_mpvr")).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let bash = run(&["completions", "bash"]);
    assert!(bash.contains("complete -F _mpvr") && bash.contains("status"), "{bash}");
    for shell in ["zsh", "fish"] {
        assert!(run(&["completions", shell]).contains("completions"), "{shell}");
    }
    let man = run(&["man"]);
    assert!(man.contains(".TH mpvr 1"), "{man}");
    for sub in ["run", "status", "check", "genkey", "pubkey"] {
        assert!(man.contains(sub), "{sub} missing from the manual page");
    }
}
