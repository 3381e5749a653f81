//! The testbed's other files: the netplan files of the three VMs are valid
//! (`netplan generate`) and agree with examples/seed/, and every shell
//! script is shellcheck-clean (the VirtualBox scripts cannot run here; this
//! is how they are checked).

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// True if `tool` is installed; otherwise skip saying why, or fail under CI
/// (whose .ci/run installs it).
fn tool_or_skip(tool: &str, package: &str) -> bool {
    let found =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file())).unwrap_or(false);
    if found {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{tool} is missing: .ci/run installs {package}");
    }
    eprintln!("SKIPPED: {tool} is not installed (apt-get install {package})");
    false
}

#[test]
fn netplan_files_generate_and_match_the_seed_configs() {
    if !tool_or_skip("netplan", "netplan.io") {
        return;
    }
    for vm in ["vm0", "vm1", "vm2"] {
        let dir = std::env::temp_dir().join(format!("mpvr-netplan-{}-{vm}", std::process::id()));
        let etc = dir.join("etc/netplan");
        std::fs::create_dir_all(&etc).unwrap();
        let yaml = std::fs::read_to_string(repo().join(format!("netplan/{vm}.yaml"))).unwrap();
        let file = etc.join(format!("60-{vm}.yaml"));
        std::fs::write(&file, &yaml).unwrap();
        let private = std::os::unix::fs::PermissionsExt::from_mode(0o600);
        std::fs::set_permissions(&file, private).unwrap();
        let out = Command::new("netplan").arg("generate").arg("--root-dir").arg(&dir).output().unwrap();
        assert!(out.status.success(), "{vm}: {}", String::from_utf8_lossy(&out.stderr));
        let mut generated = String::new();
        for e in std::fs::read_dir(dir.join("run/systemd/network")).unwrap() {
            generated.push_str(&std::fs::read_to_string(e.unwrap().path()).unwrap());
        }
        // Every address the seed configs use as an endpoint of this VM is on it.
        let mine: Vec<&str> = match vm {
            "vm0" => vec!["192.168.0.2", "192.168.1.2"],
            "vm1" => vec!["192.168.0.3", "192.168.1.3", "192.168.2.3", "192.168.3.3"],
            _ => vec!["192.168.2.2", "192.168.3.2"],
        };
        for a in mine {
            assert!(generated.contains(&format!("Address={a}/24")), "{vm} lacks {a}:\n{generated}");
            let seed = std::fs::read_dir(repo().join("examples/seed"))
                .unwrap()
                .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
                .collect::<String>();
            assert!(seed.contains(&format!("\"{a}:51820\"")), "no seed config names {a}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

fn shell_scripts(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            shell_scripts(&p, out);
        } else if p.extension().is_some_and(|x| x == "sh") {
            out.push(p);
        }
    }
}

#[test]
fn shell_scripts_are_shellcheck_clean() {
    if !tool_or_skip("shellcheck", "shellcheck") {
        return;
    }
    let mut scripts = vec![repo().join(".ci/run")];
    for d in ["scripts", "testbed"] {
        shell_scripts(&repo().join(d), &mut scripts);
    }
    assert!(scripts.len() >= 6, "{scripts:?}");
    let out = Command::new("shellcheck").args(&scripts).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}
