//! The binary's configuration errors: one line on stderr, exit code 2.

use std::process::{Command, Output};

fn volt(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_volt"));
    cmd.args(args).env_clear();
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("volt runs")
}

fn assert_config_error(out: &Output, mentions: &str) {
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains(mentions), "{stderr}");
}

#[test]
fn missing_secret_and_insecure_is_a_one_line_error_with_exit_code_2() {
    let out = volt(&[], &[("DATABASE_URL", "postgresql://u@localhost/db")]);
    assert_config_error(&out, "ELECTRIC_SECRET");
}

#[test]
fn secret_and_insecure_together_are_rejected() {
    let out = volt(
        &["serve"],
        &[
            ("DATABASE_URL", "postgresql://u@localhost/db"),
            ("ELECTRIC_SECRET", "s"),
            ("ELECTRIC_INSECURE", "true"),
        ],
    );
    assert_config_error(&out, "not both");
}

#[test]
fn missing_database_url_is_rejected() {
    let out = volt(&[], &[("ELECTRIC_INSECURE", "true")]);
    assert_config_error(&out, "DATABASE_URL");
}

#[test]
fn invalid_values_are_rejected() {
    let base = [
        ("DATABASE_URL", "postgresql://u@localhost/db"),
        ("ELECTRIC_INSECURE", "true"),
    ];
    for (k, v, mentions) in [
        (
            "ELECTRIC_REPLICATION_STREAM_ID",
            "Bad-Id",
            "ELECTRIC_REPLICATION_STREAM_ID",
        ),
        ("ELECTRIC_PORT", "lots", "lots"),
        ("ELECTRIC_LONG_POLL_TIMEOUT", "soon", "soon"),
        ("ELECTRIC_SSE_TIMEOUT", "0", "ELECTRIC_SSE_TIMEOUT"),
        ("ELECTRIC_OUT_OF_BOUNDS_TIMEOUT", "later", "later"),
        ("ELECTRIC_LOG_FORMAT", "xml", "ELECTRIC_LOG_FORMAT"),
        (
            "ELECTRIC_MAX_CONCURRENT_REQUESTS",
            "{\"initial\":0}",
            "at least 1",
        ),
        ("ELECTRIC_MAX_CONCURRENT_REQUESTS", "lots", "expected JSON"),
        ("ELECTRIC_LOG_LEVEL", "loud", "ELECTRIC_LOG_LEVEL"),
        ("ELECTRIC_INSECURE", "maybe", "maybe"),
    ] {
        let mut env = base.to_vec();
        env.retain(|(name, _)| *name != k);
        env.push((k, v));
        let out = volt(&[], &env);
        assert_eq!(out.status.code(), Some(2), "{k}={v}: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(mentions),
            "{k}={v}: {out:?}"
        );
    }
}

#[test]
fn a_database_url_that_is_not_postgres_is_rejected() {
    let out = volt(
        &[],
        &[
            ("DATABASE_URL", "mysql://u@localhost/db"),
            ("ELECTRIC_INSECURE", "true"),
        ],
    );
    assert_config_error(&out, "DATABASE_URL");
}

#[test]
fn help_lists_electrics_settings() {
    let out = volt(&["--help"], &[]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for var in [
        "DATABASE_URL",
        "ELECTRIC_PORT",
        "ELECTRIC_STORAGE_DIR",
        "ELECTRIC_SECRET",
        "ELECTRIC_INSECURE",
        "ELECTRIC_REPLICATION_STREAM_ID",
        "ELECTRIC_LONG_POLL_TIMEOUT",
        "ELECTRIC_ENABLE_INTEGRATION_TESTING",
        "ELECTRIC_LOG_LEVEL",
    ] {
        assert!(help.contains(var), "{var} missing from --help");
    }
}
