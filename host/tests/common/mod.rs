//! Helpers shared by the command-line tests (`mod common;`): run `host`, require success, make
//! a fresh scratch folder.
#![allow(dead_code)] // each test file uses its own subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Gives the child the default action for the stop signals the tests send, whatever this
/// process inherited: host keeps a signal ignored at start (as under `nohup`, or for `cmd &`
/// in a shell without job control, which ignores SIGINT), and a test run from such a shell
/// must still see its SIGINT/SIGTERM handled.
pub fn default_signals(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: signal(2) is async-signal-safe, as pre_exec requires.
    unsafe {
        cmd.pre_exec(|| {
            for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
                libc::signal(sig, libc::SIG_DFL);
            }
            Ok(())
        })
    }
}

/// Runs the `host` binary with `args`.
pub fn host(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_host"))
        .args(args)
        .output()
        .expect("the host binary runs")
}

/// Runs `host` and requires exit code 0 (the assertion shows its stderr).
pub fn ok(args: &[&str]) -> Output {
    let out = host(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// An empty folder `<target tmp>/<suite>/<name>`, removed first if a previous run left it.
pub fn scratch_in(suite: &str, name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(suite)
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A path as a command-line argument.
pub fn s(p: &Path) -> String {
    p.display().to_string()
}

/// The MNIST folder (`$TWEEDIE_MNIST`, else `<workspace>/data/mnist`), or `None` only when
/// `TWEEDIE_NO_MNIST=1` says to skip the tests that need it; otherwise a missing MNIST fails
/// the test with the command that installs it.
pub fn mnist_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("TWEEDIE_MNIST") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../data/mnist")),
    };
    if dir.join("train-images-idx3-ubyte").exists() && dir.join("t10k-images-idx3-ubyte").exists() {
        return Some(dir);
    }
    // Skipping is a choice the caller states, never a silent pass.
    assert!(
        std::env::var_os("TWEEDIE_NO_MNIST").is_some_and(|v| v == "1"),
        "no MNIST in {}: run scripts/fetch-mnist.sh (scripts/test.sh does), or set \
         TWEEDIE_NO_MNIST=1 to skip the tests that need it",
        dir.display()
    );
    eprintln!(
        "skipping (TWEEDIE_NO_MNIST=1): no MNIST in {}",
        dir.display()
    );
    None
}
