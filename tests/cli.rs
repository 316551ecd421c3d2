//! The `diesel-idempotent` command's `inspect`, `forget`, `stats` and
//! `purge`, run as a process against a database that `#[idempotent]`
//! calls filled: what it prints, what it changes, its exit status. Each
//! test is written once, generic over the backend, and runs on SQLite (a
//! file), PostgreSQL and MySQL/MariaDB (a database of its own on the
//! servers of `DIESEL_IDEMPOTENT_PG_URL` and `DIESEL_IDEMPOTENT_MYSQL_URL`;
//! without them those tests fail). The command judges expiry by the system
//! clock, so the records are written with a `ManualClock` set to now (live)
//! or two hours ago (expired).

#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
mod common;

use std::process::Command;

/// What one run of the command did.
#[derive(Debug)]
struct Run {
    status: i32,
    stdout: String,
    stderr: String,
}

/// Runs `diesel-idempotent args..` with `DATABASE_URL` set to `env_url`,
/// or unset.
fn cli_with_env(args: &[&str], env_url: Option<&str>) -> Run {
    let mut command = Command::new(env!("CARGO_BIN_EXE_diesel-idempotent"));
    command.args(args);
    match env_url {
        Some(url) => command.env("DATABASE_URL", url),
        None => command.env_remove("DATABASE_URL"),
    };
    let output = command.output().expect("run diesel-idempotent");
    Run {
        status: output.status.code().expect("an exit status"),
        stdout: String::from_utf8(output.stdout).expect("UTF-8 stdout"),
        stderr: String::from_utf8(output.stderr).expect("UTF-8 stderr"),
    }
}

fn cli(args: &[&str]) -> Run {
    cli_with_env(args, None)
}

/// A database the command runs against.
struct Target {
    url: String,
}

impl Target {
    /// Runs `diesel-idempotent command --database-url URL args..`.
    fn run(&self, command: &str, args: &[&str]) -> Run {
        let mut all = vec![command, "--database-url", &self.url];
        all.extend_from_slice(args);
        cli(&all)
    }
}

#[test]
fn help_lists_every_command_and_the_exit_statuses() {
    let run = cli(&["--help"]);
    assert_eq!(run.status, 0, "{run:?}");
    for text in [
        "inspect --database-url <URL> --namespace <NS> --key <KEY> [--scope <SCOPE>]",
        "inspect --database-url <URL> --namespace <NS> [--in-flight | --completed] [--limit <N>]",
        "forget --database-url <URL> --namespace <NS> --key <KEY> [--scope <SCOPE>]",
        "stats --database-url <URL>",
        "purge --database-url <URL> [--batch <N>]",
        "migrations --backend <sqlite|postgres|mysql> [--dir <migrations dir>]",
        "exit status: 0 done; 1 no such record (inspect --key, forget); 2 usage error",
        "3 database error",
    ] {
        assert!(
            run.stdout.contains(text),
            "{text:?} missing from\n{}",
            run.stdout
        );
    }
    assert_eq!(cli(&["purge", "--help"]).stdout, run.stdout);
}

#[test]
fn usage_errors_exit_2_with_a_sentence_and_the_usage() {
    for (args, message) in [
        (
            &["stats", "--database-url", "x.db", "--verbose"][..],
            "error: unknown argument \"--verbose\" for stats",
        ),
        (
            &["inspect", "--database-url", "x.db", "--key", "k"],
            "error: missing --namespace",
        ),
        (
            &["stats"],
            "error: missing --database-url (or the DATABASE_URL environment variable)",
        ),
        (
            &["purge", "--database-url", "x.db", "--batch", "none"],
            "error: --batch needs a whole number of at least 1, not \"none\"",
        ),
        (&["vacuum"], "error: unknown command \"vacuum\""),
        (&[], "error: missing command"),
    ] {
        let run = cli(args);
        assert_eq!(run.status, 2, "{args:?}: {run:?}");
        assert!(run.stderr.starts_with(message), "{args:?}: {}", run.stderr);
        assert!(run.stderr.contains("usage:"), "{args:?}: {}", run.stderr);
        assert!(run.stdout.is_empty(), "{args:?}: {run:?}");
    }
}

#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
mod generic {
    use std::time::Duration;

    use chrono::{DateTime, NaiveDateTime, Utc};
    use diesel_idempotent::{ManualClock, idempotent};

    use super::{Run, Target, cli, cli_with_env};
    use crate::common::{AppError, Backend, DatabaseUrl, TestConn};

    const ORDERS: &str = "cli.orders";

    /// One payment per key; its result is the payment's id.
    #[idempotent(key = key, ttl = "1h", name = "cli.orders", clock = clock)]
    fn place_order<C: TestConn>(
        conn: &mut C,
        clock: &ManualClock,
        key: &str,
        amount: i64,
    ) -> Result<i64, AppError> {
        Ok(conn.insert_payment(amount)?)
    }

    /// Per-tenant records of another namespace.
    #[idempotent(key = key, scope = tenant, ttl = "1h", name = "cli.refunds", clock = clock)]
    fn refund<C: TestConn>(
        conn: &mut C,
        clock: &ManualClock,
        tenant: &str,
        key: &str,
    ) -> Result<i64, AppError> {
        Ok(conn.insert_payment(-1)?)
    }

    /// A clock at the system's now: its records are live for the command.
    fn live() -> ManualClock {
        ManualClock::new(Utc::now())
    }

    /// A clock two hours back: its records (TTL 1 h) have expired.
    fn expired() -> ManualClock {
        ManualClock::new(Utc::now() - chrono::Duration::hours(2))
    }

    /// A record committed without a result, the one way another connection
    /// sees a record in flight (the library commits its records with their
    /// result): written by hand, in SQL all three dialects read alike.
    fn stuck_record<C: TestConn>(conn: &mut C, key: &str) {
        let now = Utc::now();
        let at = |time: DateTime<Utc>| time.format("%Y-%m-%d %H:%M:%S%.6f");
        conn.batch_execute(&format!(
            "INSERT INTO idempotency_records VALUES \
             ('{ORDERS}', '', '{key}', 'v2:0', NULL, '{}', '{}')",
            at(now - chrono::Duration::minutes(5)),
            at(now + chrono::Duration::hours(1)),
        ))
        .expect("insert a record by hand");
    }

    /// The value of `field:` in `inspect --key`'s output.
    fn field<'a>(run: &'a Run, name: &str) -> &'a str {
        run.stdout
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{name}:")))
            .unwrap_or_else(|| panic!("no {name}: line in\n{}", run.stdout))
            .trim_start()
    }

    /// An RFC 3339 time of the output, as the record holds it.
    fn time(text: &str) -> NaiveDateTime {
        assert!(text.ends_with('Z'), "UTC: {text}");
        DateTime::parse_from_rfc3339(text)
            .unwrap_or_else(|e| panic!("{text}: {e}"))
            .naive_utc()
    }

    pub fn inspect_shows_a_record_and_lists_a_namespace<B: Backend + DatabaseUrl>() {
        let db = B::fresh();
        let target = Target { url: db.url() };
        let mut conn = db.connect();
        let clock = live();
        let id = place_order(&mut conn, &clock, "order-1", 250).unwrap();
        clock.advance(Duration::from_secs(1));
        place_order(&mut conn, &clock, "order-2", 300).unwrap();
        place_order(&mut conn, &expired(), "order-0", 100).unwrap();
        refund(&mut conn, &clock, "tenant 1", "refund-1").unwrap();
        stuck_record(&mut conn, "stuck-1");

        let run = target.run("inspect", &["--namespace", ORDERS, "--key", "order-1"]);
        assert_eq!((run.status, run.stderr.as_str()), (0, ""), "{run:?}");
        let record = conn.load_record(ORDERS, "order-1").unwrap();
        let names: Vec<&str> = run
            .stdout
            .lines()
            .map(|line| line.split(':').next().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "namespace",
                "scope",
                "key",
                "state",
                "fingerprint",
                "created_at",
                "expires_at",
                "response"
            ]
        );
        assert_eq!(field(&run, "namespace"), ORDERS);
        assert_eq!(field(&run, "scope"), "\"\"");
        assert_eq!(field(&run, "key"), "order-1");
        assert_eq!(field(&run, "state"), "completed");
        assert_eq!(field(&run, "fingerprint"), record.fingerprint);
        assert_eq!(time(field(&run, "created_at")), record.created_at);
        assert_eq!(time(field(&run, "expires_at")), record.expires_at);
        assert_eq!(field(&run, "response"), id.to_string());

        let run = target.run("inspect", &["--namespace", ORDERS, "--key", "order-0"]);
        assert_eq!(field(&run, "state"), "expired", "{run:?}");
        let run = target.run("inspect", &["--namespace", ORDERS, "--key", "stuck-1"]);
        assert_eq!(field(&run, "state"), "in-flight", "{run:?}");
        assert_eq!(field(&run, "response"), "(none)");

        // A scope is named with --scope; without it the record is another's.
        let run = target.run(
            "inspect",
            &["--namespace", "cli.refunds", "--key", "refund-1"],
        );
        assert_eq!(run.status, 1, "{run:?}");
        assert_eq!(
            run.stderr,
            "no record of key refund-1 in namespace cli.refunds (scope \"\")\n"
        );
        assert!(run.stdout.is_empty());
        let run = target.run(
            "inspect",
            &[
                "--namespace",
                "cli.refunds",
                "--key",
                "refund-1",
                "--scope",
                "tenant 1",
            ],
        );
        assert_eq!(run.status, 0, "{run:?}");
        assert_eq!(field(&run, "scope"), "\"tenant 1\"");

        // The list: in flight first, then completed, newest first; the
        // expired record is left out.
        let run = target.run("inspect", &["--namespace", ORDERS]);
        assert_eq!((run.status, run.stderr.as_str()), (0, ""), "{run:?}");
        let lines: Vec<&str> = run.stdout.lines().collect();
        assert_eq!(lines.len(), 3, "{}", run.stdout);
        for (line, (state, key)) in lines.iter().zip([
            ("in-flight", "stuck-1"),
            ("completed", "order-2"),
            ("completed", "order-1"),
        ]) {
            let record = conn.load_record(ORDERS, key).unwrap();
            let created_at = record.created_at.format("%Y-%m-%dT%H:%M:%S%.fZ");
            let expires_at = record.expires_at.format("%Y-%m-%dT%H:%M:%S%.fZ");
            assert_eq!(
                *line,
                format!(
                    "state={state} key={key} scope=\"\" created_at={created_at} \
                     expires_at={expires_at}"
                )
            );
        }
        let run = target.run(
            "inspect",
            &["--namespace", ORDERS, "--completed", "--limit", "1"],
        );
        assert_eq!(run.stdout.lines().count(), 1, "{run:?}");
        assert!(
            run.stdout.starts_with("state=completed key=order-2 "),
            "{run:?}"
        );
        let run = target.run("inspect", &["--namespace", ORDERS, "--in-flight"]);
        assert!(
            run.stdout.starts_with("state=in-flight key=stuck-1 "),
            "{run:?}"
        );
        let run = target.run("inspect", &["--namespace", "cli.none", "--in-flight"]);
        assert_eq!(run.status, 0, "{run:?}");
        assert!(run.stdout.is_empty());
        assert_eq!(
            run.stderr,
            "no in-flight records in namespace \"cli.none\"\n"
        );
    }

    pub fn forget_removes_a_record_and_the_next_call_runs_the_body<B: Backend + DatabaseUrl>() {
        let db = B::fresh();
        let target = Target { url: db.url() };
        let mut conn = db.connect();
        let clock = live();
        let first = place_order(&mut conn, &clock, "order-1", 250).unwrap();
        place_order(&mut conn, &clock, "order-2", 300).unwrap();
        assert_eq!(
            place_order(&mut conn, &clock, "order-1", 250).unwrap(),
            first
        );
        assert_eq!(conn.count_payments().unwrap(), 2);

        let record = conn.load_record(ORDERS, "order-1").unwrap();
        let run = target.run("forget", &["--namespace", ORDERS, "--key", "order-1"]);
        assert_eq!((run.status, run.stderr.as_str()), (0, ""), "{run:?}");
        let created_at = forgotten_created_at(&run.stdout);
        assert_eq!(time(&created_at), record.created_at);
        assert_eq!(
            run.stdout,
            format!(
                "forgot the completed record of key order-1 in namespace cli.orders (scope \"\"), \
                 created at {created_at}; the next call with this key runs its body again\n"
            )
        );
        assert_eq!(conn.record_keys().unwrap(), ["order-2"]);

        let again = place_order(&mut conn, &clock, "order-1", 250).unwrap();
        assert_ne!(again, first);
        assert_eq!(conn.count_payments().unwrap(), 3, "the body ran again");

        let run = target.run("forget", &["--namespace", ORDERS, "--key", "order-9"]);
        assert_eq!(run.status, 1, "{run:?}");
        assert!(run.stdout.is_empty());
        assert_eq!(
            run.stderr,
            "nothing to forget: no record of key order-9 in namespace cli.orders (scope \"\")\n"
        );
        assert_eq!(conn.record_keys().unwrap(), ["order-1", "order-2"]);
    }

    /// The `created_at` that a `forget` line names.
    fn forgotten_created_at(line: &str) -> String {
        let (_, rest) = line.split_once(", created at ").expect("a created_at");
        rest.split(';').next().unwrap().to_owned()
    }

    pub fn stats_counts_live_in_flight_and_expired_per_namespace<B: Backend + DatabaseUrl>() {
        let db = B::fresh();
        let target = Target { url: db.url() };
        let mut conn = db.connect();
        let clock = live();
        for key in ["order-1", "order-2", "order-3"] {
            place_order(&mut conn, &clock, key, 1).unwrap();
        }
        for key in ["order-4", "order-5"] {
            place_order(&mut conn, &expired(), key, 1).unwrap();
        }
        stuck_record(&mut conn, "stuck-1");
        refund(&mut conn, &clock, "tenant-1", "refund-1").unwrap();

        // The URL from DATABASE_URL, when the flag is absent.
        let run = cli_with_env(&["stats"], Some(&target.url));
        assert_eq!((run.status, run.stderr.as_str()), (0, ""), "{run:?}");
        let rows: Vec<Vec<&str>> = run
            .stdout
            .lines()
            .map(|line| line.split_whitespace().collect())
            .collect();
        assert_eq!(
            rows,
            [
                ["namespace", "live", "in-flight", "expired"],
                ["cli.orders", "4", "1", "2"],
                ["cli.refunds", "1", "0", "0"],
                ["total", "5", "1", "2"],
            ]
        );
        let flag = cli_with_env(
            &["stats", "--database-url", &target.url],
            Some("/nonexistent.db"),
        );
        assert_eq!(flag.stdout, run.stdout, "the flag wins over DATABASE_URL");
    }

    pub fn purge_reports_its_batches_and_deletes_expired_records<B: Backend + DatabaseUrl>() {
        let db = B::fresh();
        let target = Target { url: db.url() };
        let mut conn = db.connect();
        let old = expired();
        for i in 0..30 {
            place_order(&mut conn, &old, &format!("old-{i}"), i).unwrap();
        }
        for key in ["order-1", "order-2"] {
            place_order(&mut conn, &live(), key, 1).unwrap();
        }

        let run = target.run("purge", &["--batch", "7"]);
        assert_eq!(run.status, 0, "{run:?}");
        assert_eq!(run.stderr, "", "no bar when stderr is not a terminal");
        let summary = Summary::read(&run.stdout);
        assert_eq!(
            (summary.purged, summary.batches, summary.batch_size),
            (30, 5, 7)
        );
        assert!(
            summary.seconds >= 0.0 && summary.rows_per_second > 0,
            "{summary:?}"
        );
        // The seconds are rounded to a tenth.
        assert!(
            summary.longest_ms as f64 <= summary.seconds * 1000.0 + 50.0,
            "{summary:?}"
        );
        assert_eq!(conn.record_keys().unwrap(), ["order-1", "order-2"]);

        let run = target.run("purge", &[]);
        assert_eq!(run.status, 0, "{run:?}");
        assert!(
            run.stdout.starts_with("purged 0 expired records in "),
            "{}",
            run.stdout
        );
        assert!(
            run.stdout
                .contains(" in 1 batch of up to 1000; longest batch "),
            "{}",
            run.stdout
        );
        assert_eq!(conn.count_records().unwrap(), 2);
    }

    /// The fields of `purge`'s summary line.
    #[derive(Debug)]
    struct Summary {
        purged: u64,
        seconds: f64,
        rows_per_second: u64,
        batches: u64,
        batch_size: u64,
        longest_ms: u64,
    }

    impl Summary {
        /// `purged N expired records in S s (R rows/s) in B batches of up
        /// to SIZE; longest batch M ms`
        fn read(stdout: &str) -> Summary {
            let line = stdout.strip_suffix('\n').expect("one line");
            assert!(!line.contains('\n'), "one line: {stdout}");
            let words: Vec<&str> = line.split(' ').collect();
            let number = |i: usize| -> u64 {
                words[i]
                    .trim_matches(|c| c == '(' || c == ';')
                    .parse()
                    .unwrap_or_else(|e| panic!("word {i} of {line:?}: {e}"))
            };
            assert_eq!(
                [
                    words[0], words[2], words[3], words[4], words[6], words[8], words[9]
                ],
                ["purged", "expired", "records", "in", "s", "rows/s)", "in"],
                "{line}"
            );
            assert_eq!(
                [
                    words[11], words[12], words[13], words[14], words[16], words[17], words[19]
                ],
                ["batches", "of", "up", "to", "longest", "batch", "ms"],
                "{line}"
            );
            assert_eq!(words.len(), 20, "{line}");
            Summary {
                purged: number(1),
                seconds: words[5].parse().unwrap(),
                rows_per_second: number(7),
                batches: number(10),
                batch_size: number(15),
                longest_ms: number(18),
            }
        }
    }

    pub fn database_errors_exit_3_with_a_sentence<B: Backend + DatabaseUrl>() {
        // No record table: the migration never ran.
        let db = B::empty();
        let target = Target { url: db.url() };
        let record = ["--namespace", ORDERS, "--key", "k"];
        for (command, args) in [
            ("stats", &[][..]),
            ("purge", &[]),
            ("inspect", &record),
            ("forget", &record),
        ] {
            let run = target.run(command, args);
            assert_eq!(run.status, 3, "{command} {args:?}: {run:?}");
            assert!(run.stdout.is_empty(), "{run:?}");
            assert!(
                run.stderr.starts_with("error: the database at ")
                    && run
                        .stderr
                        .contains(" has no idempotency_records table: create it with ")
                    && run
                        .stderr
                        .contains("diesel-idempotent migrations --backend"),
                "{}",
                run.stderr
            );
        }
    }

    /// A URL of the backend that cannot connect: its message names the URL
    /// without its password and gives the database's reason.
    pub fn unreachable_database_exits_3(url: &str, shown: &str) {
        let run = cli(&["stats", "--database-url", url]);
        assert_eq!(run.status, 3, "{run:?}");
        assert!(
            run.stderr
                .starts_with(&format!("error: could not connect to {shown}: ")),
            "{}",
            run.stderr
        );
        assert!(!run.stderr.contains("s3cret"), "{}", run.stderr);
        assert!(
            run.stderr.trim_end().len() > format!("error: could not connect to {shown}: ").len()
        );
    }
}

/// Every generic test on one backend, and its unreachable URL.
macro_rules! cli_tests {
    ($module:ident, $feature:literal, $backend:ty, $unreachable:literal, $shown:literal) => {
        #[cfg(feature = $feature)]
        mod $module {
            #[test]
            fn inspect_shows_a_record_and_lists_a_namespace() {
                super::generic::inspect_shows_a_record_and_lists_a_namespace::<$backend>();
            }

            #[test]
            fn forget_removes_a_record_and_the_next_call_runs_the_body() {
                super::generic::forget_removes_a_record_and_the_next_call_runs_the_body::<$backend>(
                );
            }

            #[test]
            fn stats_counts_live_in_flight_and_expired_per_namespace() {
                super::generic::stats_counts_live_in_flight_and_expired_per_namespace::<$backend>();
            }

            #[test]
            fn purge_reports_its_batches_and_deletes_expired_records() {
                super::generic::purge_reports_its_batches_and_deletes_expired_records::<$backend>();
            }

            #[test]
            fn database_errors_exit_3_with_a_sentence() {
                super::generic::database_errors_exit_3_with_a_sentence::<$backend>();
            }

            #[test]
            fn unreachable_database_exits_3() {
                super::generic::unreachable_database_exits_3($unreachable, $shown);
            }
        }
    };
}

cli_tests!(
    sqlite,
    "sqlite",
    crate::common::Sqlite,
    "/nonexistent/dir/app.sqlite3",
    "/nonexistent/dir/app.sqlite3"
);
cli_tests!(
    postgres,
    "postgres",
    crate::common::Postgres,
    "postgres://app:s3cret@127.0.0.1:1/app",
    "postgres://app:***@127.0.0.1:1/app"
);
cli_tests!(
    mysql,
    "mysql",
    crate::common::Mysql,
    "mariadb://app:s3cret@127.0.0.1:1/app",
    "mariadb://app:***@127.0.0.1:1/app"
);

#[cfg(not(feature = "postgres"))]
#[test]
fn postgres_cli_skipped_feature_disabled() {
    println!("SKIPPED: the command on PostgreSQL (build with --features postgres)");
}

#[cfg(not(feature = "mysql"))]
#[test]
fn mysql_cli_skipped_feature_disabled() {
    println!("SKIPPED: the command on MySQL (build with --features mysql)");
}

/// A batch beyond what a statement's `LIMIT` takes is a malformed value:
/// status 2 and the usage, not a database error.
#[cfg(feature = "sqlite")]
#[test]
fn purge_batch_too_large_is_a_usage_error() {
    use crate::common::{Backend, DatabaseUrl};
    let db = crate::common::Sqlite::fresh();
    let target = Target { url: db.url() };
    let huge = (i64::MAX as u64 + 1).to_string();
    let run = target.run("purge", &["--batch", &huge]);
    assert_eq!(run.status, 2, "{run:?}");
    assert!(
        run.stderr
            .starts_with("error: --batch is at most 9223372036854775807, not "),
        "{}",
        run.stderr
    );
    assert!(run.stdout.is_empty(), "{run:?}");
}

/// A misspelt flag is named in the error without the value it carries:
/// a URL's password never shows.
#[test]
fn unknown_flag_with_a_url_never_shows_its_password() {
    let run = cli(&["stats", "--database_url=postgres://app:s3cret@db:5432/app"]);
    assert_eq!(run.status, 2, "{run:?}");
    assert!(
        run.stderr
            .starts_with("error: unknown argument \"--database_url\" for stats"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("s3cret"), "{}", run.stderr);
}

/// A connection string in libpq's `key=value` form is not a URL the command
/// knows (it is taken for a SQLite file that does not exist), and the error
/// does not show its `password=`.
#[cfg(feature = "sqlite")]
#[test]
fn key_value_connection_string_never_shows_its_password() {
    let run = cli(&[
        "stats",
        "--database-url",
        "host=db user=app password=s3cret dbname=app",
    ]);
    assert_eq!(run.status, 3, "{run:?}");
    assert!(!run.stderr.contains("s3cret"), "{}", run.stderr);
}
