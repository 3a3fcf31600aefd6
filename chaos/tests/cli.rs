//! The harness refuses bad options with a reason, before it starts anything.

use std::process::Command;

#[test]
fn bad_options_are_refused_with_a_reason() {
    for (args, says) in [
        (&["--duration", "0s"][..], "a duration from 1 s to 24 h"),
        (&["--duration", "ten"][..], "not a duration"),
        (&["--duration", "5h3"][..], "not a duration"),
        (&["--faults", "kill,meteor"][..], "unknown fault \"meteor\""),
        (&["--clients", "0"][..], "--clients must be 1 to 64"),
        (&["--seed", "-1"][..], "unexpected argument '-1'"),
        (
            &["--target", "compose"][..],
            "--target compose needs --api-key",
        ),
        (
            &["--target", "swarm"][..],
            "invalid value 'swarm' for '--target",
        ),
    ] {
        let run = Command::new(env!("CARGO_BIN_EXE_authsync-chaos"))
            .args(args)
            .env_remove("AUTHSYNC_API_KEY")
            .output()
            .expect("run authsync-chaos");
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(!run.status.success(), "{args:?} was accepted");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}
