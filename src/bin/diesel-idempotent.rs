//! `diesel-idempotent`: the record table's tool. Writes its migration as a
//! Diesel CLI migration folder, and inspects, forgets, counts and purges
//! records on a database (see [`USAGE`]).
//!
//! Arguments are parsed by hand and the progress bar is drawn by hand:
//! this package's dependencies are those of every application that uses
//! the library.
#![cfg_attr(
    not(any(feature = "sqlite", feature = "postgres", feature = "mysql")),
    allow(dead_code, unused_imports)
)]

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use diesel_idempotent::admin::{self, NamespaceStats, RecordState};
use diesel_idempotent::migrations::{Backend, write_diesel_cli_migrations};
use diesel_idempotent::{Clock, IdempotencyRecord, IdempotentConnection, ManualClock, SystemClock};

const USAGE: &str = "\
usage:
  diesel-idempotent migrations --backend <sqlite|postgres|mysql> [--dir <migrations dir>]
  diesel-idempotent inspect --database-url <URL> --namespace <NS> --key <KEY> [--scope <SCOPE>]
  diesel-idempotent inspect --database-url <URL> --namespace <NS> [--in-flight | --completed] [--limit <N>]
  diesel-idempotent forget --database-url <URL> --namespace <NS> --key <KEY> [--scope <SCOPE>]
  diesel-idempotent stats --database-url <URL>
  diesel-idempotent purge --database-url <URL> [--batch <N>]

migrations  writes <dir>/<version>_create_idempotency_records/{up,down}.sql for the
            backend (default dir: ./migrations); apply it with `diesel migration run`.
inspect     with --key: that record's fields, expired or not (--scope: the call's
            scope, default none). Without --key: the namespace's live records, one a
            line, in flight (oldest first) then completed (newest first), at most
            --limit of each (default 20).
forget      deletes one record. DANGEROUS: the next call with its key runs the body
            again, and repeats whatever the first call did.
stats       live, in-flight and expired records per namespace, and a total line.
purge       deletes expired records in batches of --batch (default 1000): a progress
            bar on a terminal, then one summary line.

--database-url (default: $DATABASE_URL): postgres:// or postgresql:// (feature
`postgres`), mysql:// or mariadb:// (feature `mysql`); anything else is an existing
SQLite file (a path, sqlite://path or a file: URI; feature `sqlite`). A flag's value
goes after it (`--limit 5`) or after `=` (`--limit=5`).

exit status: 0 done; 1 no such record (inspect --key, forget); 2 usage error, or a
backend this build leaves out; 3 database error (cannot connect, no record table,
a statement failed).";

/// How long a statement on SQLite waits for another connection's write lock
/// (an application serving beside this tool) before it fails.
#[cfg(feature = "sqlite")]
const SQLITE_BUSY_TIMEOUT_MS: u32 = 10_000;

/// How many records of each state `inspect` lists by default.
const DEFAULT_LIMIT: usize = 20;

/// How many expired records one `purge` statement deletes by default.
const DEFAULT_BATCH: usize = 1000;

fn main() -> ExitCode {
    match parse(std::env::args().skip(1)).and_then(run) {
        Ok(report) => {
            emit(&report);
            ExitCode::SUCCESS
        }
        Err(failure) => {
            eprintln!("{failure}");
            ExitCode::from(failure.status())
        }
    }
}

/// What the command line asks for.
#[derive(Debug)]
enum Command {
    Help,
    Migrations { backend: Backend, dir: PathBuf },
    Database { url: String, action: Action },
}

/// What a command does on a database.
#[derive(Debug)]
enum Action {
    /// `inspect --key`: one record.
    Show(RecordId),
    /// `inspect` without `--key`: live records of a namespace.
    List {
        namespace: String,
        states: Vec<RecordState>,
        limit: usize,
    },
    Forget(RecordId),
    Stats,
    Purge {
        batch: usize,
    },
}

/// A record's primary key, as given on the command line.
#[derive(Debug)]
struct RecordId {
    namespace: String,
    scope: String,
    key: String,
}

/// Why a command stopped; each maps to an exit status.
#[derive(Debug)]
enum Failure {
    /// Arguments that do not make a command (status 2, with the usage).
    Usage(String),
    /// A URL of a backend this build leaves out (status 2).
    #[cfg_attr(
        all(feature = "sqlite", feature = "postgres", feature = "mysql"),
        allow(dead_code, reason = "a build with every backend leaves none out")
    )]
    NotBuilt(String),
    /// No such record (status 1).
    NotFound(String),
    /// The database refused, failed, or lacks the table (status 3).
    Database(String),
}

impl Failure {
    fn status(&self) -> u8 {
        match self {
            Failure::NotFound(_) => 1,
            Failure::Usage(_) | Failure::NotBuilt(_) => 2,
            Failure::Database(_) => 3,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Usage(message) => write!(f, "error: {message}\n\n{USAGE}"),
            Failure::NotFound(message) => f.write_str(message),
            Failure::NotBuilt(message) | Failure::Database(message) => {
                write!(f, "error: {message}")
            }
        }
    }
}

fn usage(message: impl Into<String>) -> Failure {
    Failure::Usage(message.into())
}

/// Writes the report to stdout; a closed pipe (`| head`) is not an error.
fn emit(report: &str) {
    if !report.is_empty() {
        let _ = writeln!(std::io::stdout().lock(), "{report}");
    }
}

// ---------------------------------------------------------------------------
// Arguments

fn parse(mut args: impl Iterator<Item = String>) -> Result<Command, Failure> {
    let Some(command) = args.next() else {
        return Err(usage("missing command"));
    };
    if matches!(command.as_str(), "-h" | "--help" | "help") {
        return Ok(Command::Help);
    }
    let spec = COMMANDS
        .iter()
        .find(|spec| spec.name == command)
        .ok_or_else(|| usage(format!("unknown command {command:?}")))?;
    match Flags::parse(spec, args)? {
        Some(mut flags) => (spec.build)(&mut flags),
        None => Ok(Command::Help),
    }
}

fn migrations_command(flags: &mut Flags) -> Result<Command, Failure> {
    let backend = flags
        .value("--backend")
        .ok_or_else(|| usage("missing --backend (sqlite, postgres or mysql)"))?
        .parse()
        .map_err(usage)?;
    let dir = PathBuf::from(flags.value("--dir").unwrap_or_else(|| "migrations".into()));
    Ok(Command::Migrations { backend, dir })
}

fn inspect_command(flags: &mut Flags) -> Result<Command, Failure> {
    let action = inspect_action(flags)?;
    on_database(flags, action)
}

fn forget_command(flags: &mut Flags) -> Result<Command, Failure> {
    let action = Action::Forget(record_id(flags)?);
    on_database(flags, action)
}

fn stats_command(flags: &mut Flags) -> Result<Command, Failure> {
    on_database(flags, Action::Stats)
}

fn purge_command(flags: &mut Flags) -> Result<Command, Failure> {
    let batch = flags.count("--batch")?.unwrap_or(DEFAULT_BATCH);
    on_database(flags, Action::Purge { batch })
}

/// `action` on the database of `--database-url`, or of `DATABASE_URL`.
fn on_database(flags: &mut Flags, action: Action) -> Result<Command, Failure> {
    let url = match flags.value("--database-url") {
        Some(url) => url,
        None => std::env::var("DATABASE_URL").map_err(|_| {
            usage("missing --database-url (or the DATABASE_URL environment variable)")
        })?,
    };
    Ok(Command::Database { url, action })
}

fn inspect_action(flags: &mut Flags) -> Result<Action, Failure> {
    let (in_flight, completed) = (flags.switch("--in-flight"), flags.switch("--completed"));
    let limit = flags.count("--limit")?;
    if flags.has("--key") {
        if in_flight || completed || limit.is_some() {
            return Err(usage(
                "--key shows one record; --in-flight, --completed and --limit are for lists",
            ));
        }
        return Ok(Action::Show(record_id(flags)?));
    }
    if flags.has("--scope") {
        return Err(usage(
            "--scope goes with --key (a list shows every scope of the namespace)",
        ));
    }
    let states = match (in_flight, completed) {
        (true, true) => {
            return Err(usage(
                "--in-flight and --completed exclude each other; give neither to list both",
            ));
        }
        (true, false) => vec![RecordState::InFlight],
        (false, true) => vec![RecordState::Completed],
        (false, false) => vec![RecordState::InFlight, RecordState::Completed],
    };
    Ok(Action::List {
        namespace: flags.required("--namespace")?,
        states,
        limit: limit.unwrap_or(DEFAULT_LIMIT),
    })
}

fn record_id(flags: &mut Flags) -> Result<RecordId, Failure> {
    Ok(RecordId {
        namespace: flags.required("--namespace")?,
        scope: flags.value("--scope").unwrap_or_default(),
        key: flags.required("--key")?,
    })
}

/// A command: its flags (those that take a value, and switches), and what
/// makes the [`Command`] of them.
struct Spec {
    name: &'static str,
    values: &'static [&'static str],
    switches: &'static [&'static str],
    build: fn(&mut Flags) -> Result<Command, Failure>,
}

const COMMANDS: [Spec; 5] = [
    Spec {
        name: "migrations",
        values: &["--backend", "--dir"],
        switches: &[],
        build: migrations_command,
    },
    Spec {
        name: "inspect",
        values: &[
            "--database-url",
            "--namespace",
            "--key",
            "--scope",
            "--limit",
        ],
        switches: &["--in-flight", "--completed"],
        build: inspect_command,
    },
    Spec {
        name: "forget",
        values: &["--database-url", "--namespace", "--key", "--scope"],
        switches: &[],
        build: forget_command,
    },
    Spec {
        name: "stats",
        values: &["--database-url"],
        switches: &[],
        build: stats_command,
    },
    Spec {
        name: "purge",
        values: &["--database-url", "--batch"],
        switches: &[],
        build: purge_command,
    },
];

/// The flags given to one command, checked against its [`Spec`].
struct Flags {
    values: HashMap<&'static str, String>,
    switches: Vec<&'static str>,
}

impl Flags {
    /// The flags in `args`; `None` when they ask for help.
    fn parse(
        spec: &Spec,
        mut args: impl Iterator<Item = String>,
    ) -> Result<Option<Flags>, Failure> {
        let mut flags = Flags {
            values: HashMap::new(),
            switches: Vec::new(),
        };
        while let Some(arg) = args.next() {
            if arg == "-h" || arg == "--help" {
                return Ok(None);
            }
            let (name, inline) = match arg.split_once('=') {
                Some((name, value)) => (name, Some(value.to_owned())),
                None => (arg.as_str(), None),
            };
            if let Some(&switch) = spec.switches.iter().find(|&&s| s == name) {
                if inline.is_some() {
                    return Err(usage(format!("{switch} takes no value")));
                }
                flags.switches.push(switch);
            } else if let Some(&flag) = spec.values.iter().find(|&&v| v == name) {
                let value = match inline {
                    Some(value) => value,
                    None => args
                        .next()
                        .filter(|value| !value.starts_with("--"))
                        .ok_or_else(|| usage(format!("{flag} needs a value")))?,
                };
                if flags.values.insert(flag, value).is_some() {
                    return Err(usage(format!("{flag} is given twice")));
                }
            } else {
                // The name only: a misspelt `--database-url=..` carries a
                // password.
                return Err(usage(format!(
                    "unknown argument {name:?} for {}",
                    spec.name
                )));
            }
        }
        Ok(Some(flags))
    }

    fn has(&self, flag: &str) -> bool {
        self.values.contains_key(flag)
    }

    fn switch(&self, switch: &str) -> bool {
        self.switches.contains(&switch)
    }

    fn value(&mut self, flag: &str) -> Option<String> {
        self.values.remove(flag)
    }

    fn required(&mut self, flag: &str) -> Result<String, Failure> {
        self.value(flag)
            .ok_or_else(|| usage(format!("missing {flag}")))
    }

    /// A whole number of at least 1 that a statement's `LIMIT` takes (at
    /// most `i64::MAX`).
    fn count(&mut self, flag: &str) -> Result<Option<usize>, Failure> {
        self.value(flag)
            .map(|text| match text.parse::<usize>() {
                Ok(n) if n > 0 && i64::try_from(n).is_ok() => Ok(n),
                Ok(n) if n > 0 => Err(usage(format!(
                    "{flag} is at most {}, not {text:?}",
                    i64::MAX
                ))),
                _ => Err(usage(format!(
                    "{flag} needs a whole number of at least 1, not {text:?}"
                ))),
            })
            .transpose()
    }
}

// ---------------------------------------------------------------------------
// Commands

fn run(command: Command) -> Result<String, Failure> {
    match command {
        Command::Help => Ok(USAGE.to_owned()),
        Command::Migrations { backend, dir } => write_diesel_cli_migrations(backend, &dir)
            .map(|_| {
                backend
                    .migrations()
                    .iter()
                    .map(|m| format!("wrote {}", dir.join(m.folder_name()).display()))
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .map_err(|e| usage(format!("could not write into {}: {e}", dir.display()))),
        Command::Database { url, action } => match Dialect::of(&url) {
            Dialect::Postgres => on_postgres(&url, &action),
            Dialect::Mysql => on_mysql(&url, &action),
            Dialect::Sqlite => on_sqlite(&url, &action),
        },
    }
}

/// Which backend a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dialect {
    Postgres,
    Mysql,
    Sqlite,
}

impl Dialect {
    fn of(url: &str) -> Dialect {
        let scheme = url
            .split_once("://")
            .map(|(scheme, _)| scheme.to_ascii_lowercase());
        match scheme.as_deref() {
            Some("postgres" | "postgresql") => Dialect::Postgres,
            Some("mysql" | "mariadb") => Dialect::Mysql,
            _ => Dialect::Sqlite,
        }
    }
}

/// The sentence for a URL whose backend this build leaves out.
#[cfg_attr(
    all(feature = "sqlite", feature = "postgres", feature = "mysql"),
    allow(dead_code, reason = "a build with every backend leaves none out")
)]
fn not_built(url: &str, backend: &str, feature: &str) -> Failure {
    Failure::NotBuilt(format!(
        "{} is a {backend} URL, and this diesel-idempotent was built without {backend}; \
         rebuild it with the `{feature}` feature: \
         cargo install diesel-idempotent --features {feature}",
        without_password(url)
    ))
}

#[cfg(feature = "postgres")]
fn on_postgres(url: &str, action: &Action) -> Result<String, Failure> {
    let mut conn = connect::<diesel::PgConnection>(url, url)?;
    act(&mut conn, url, action)
}

#[cfg(not(feature = "postgres"))]
fn on_postgres(url: &str, _: &Action) -> Result<String, Failure> {
    Err(not_built(url, "PostgreSQL", "postgres"))
}

#[cfg(feature = "mysql")]
fn on_mysql(url: &str, action: &Action) -> Result<String, Failure> {
    // Diesel knows only the `mysql` scheme; MariaDB speaks the same protocol.
    let target = match url.split_once("://") {
        Some((_, rest)) => format!("mysql://{rest}"),
        None => url.to_owned(),
    };
    let mut conn = connect::<diesel::MysqlConnection>(&target, url)?;
    act(&mut conn, url, action)
}

#[cfg(not(feature = "mysql"))]
fn on_mysql(url: &str, _: &Action) -> Result<String, Failure> {
    Err(not_built(url, "MySQL", "mysql"))
}

#[cfg(feature = "sqlite")]
fn on_sqlite(url: &str, action: &Action) -> Result<String, Failure> {
    use diesel::connection::SimpleConnection;
    let mut conn =
        connect::<diesel::SqliteConnection>(&sqlite_target(url), url).map_err(|failure| {
            match failure {
                Failure::Database(message) => Failure::Database(format!(
                    "{message}; the SQLite file must exist (this tool never creates a database)"
                )),
                other => other,
            }
        })?;
    // Wait for an application's write lock rather than fail at once.
    conn.batch_execute(&format!("PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}"))
        .map_err(|e| database_error(url, &e))?;
    act(&mut conn, url, action)
}

#[cfg(not(feature = "sqlite"))]
fn on_sqlite(url: &str, _: &Action) -> Result<String, Failure> {
    Err(not_built(url, "SQLite", "sqlite"))
}

/// What SQLite opens for `url`: a URI with `mode=rw`, so that a file that
/// does not exist is an error rather than a new, empty database.
#[cfg(feature = "sqlite")]
fn sqlite_target(url: &str) -> String {
    let uri = if let Some(rest) = url.strip_prefix("sqlite://") {
        format!("file:{rest}")
    } else if url.starts_with("file:") {
        url.to_owned()
    } else if url == ":memory:" {
        return url.to_owned();
    } else {
        // A path: escape what a URI would read as its query or fragment.
        let path = url
            .replace('%', "%25")
            .replace('?', "%3F")
            .replace('#', "%23");
        format!("file:{path}")
    };
    let query = uri.split_once('?').map_or("", |(_, query)| query);
    if query.split('&').any(|pair| pair.starts_with("mode=")) {
        uri
    } else if uri.contains('?') {
        format!("{uri}&mode=rw")
    } else {
        format!("{uri}?mode=rw")
    }
}

/// Connects to `target`, naming `url` (without its password) on failure.
fn connect<C: diesel::Connection>(target: &str, url: &str) -> Result<C, Failure> {
    C::establish(target).map_err(|e| {
        Failure::Database(format!(
            "could not connect to {}: {}",
            without_password(url),
            one_line(&e)
        ))
    })
}

/// A database's message on one line (libpq's take several).
fn one_line(message: &dyn std::fmt::Display) -> String {
    let message = message.to_string();
    let lines: Vec<&str> = message
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect();
    lines.join(" ")
}

/// `url` with the password of its user, or of a `password=` parameter,
/// replaced by `***`.
fn without_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return without_password_parameter(url);
    };
    let (before_query, query) = match rest.split_once('?') {
        Some((before, query)) => (before, Some(query)),
        None => (rest, None),
    };
    let mut shown = format!("{scheme}://");
    match before_query.rsplit_once('@') {
        Some((userinfo, host)) => {
            match userinfo.split_once(':') {
                Some((user, _)) => shown.push_str(&format!("{user}:***")),
                None => shown.push_str(userinfo),
            }
            shown.push('@');
            shown.push_str(host);
        }
        None => shown.push_str(before_query),
    }
    if let Some(query) = query {
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name, _)) if name.eq_ignore_ascii_case("password") => {
                    format!("{name}=***")
                }
                _ => pair.to_owned(),
            })
            .collect();
        shown.push('?');
        shown.push_str(&pairs.join("&"));
    }
    shown
}

/// `text` that is not a URL (a path, or libpq's `key=value ..` form) with
/// the value of each `password=` in it replaced by `***`, to its end or to
/// the closing quote of a quoted value.
fn without_password_parameter(text: &str) -> String {
    let mut shown = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.to_ascii_lowercase().find("password=") {
        let value = at + "password=".len();
        shown.push_str(&rest[..value]);
        shown.push_str("***");
        rest = &rest[value..];
        let end = match rest.strip_prefix('\'') {
            Some(quoted) => quoted.find('\'').map_or(rest.len(), |close| close + 2),
            None => rest.find(char::is_whitespace).unwrap_or(rest.len()),
        };
        rest = &rest[end..];
    }
    shown.push_str(rest);
    shown
}

/// The sentence for a failed statement.
fn database_error(url: &str, error: &dyn std::fmt::Display) -> Failure {
    Failure::Database(format!(
        "the database at {} answered: {}",
        without_password(url),
        one_line(error)
    ))
}

/// The sentence for a failed library call: the database's own message.
fn admin_error(url: &str, error: diesel_idempotent::Error) -> Failure {
    match error {
        diesel_idempotent::Error::Database(e) => database_error(url, &e),
        other => database_error(url, &other),
    }
}

/// Runs `action` on an open connection, whichever the backend; returns
/// what goes to stdout.
fn act<C: IdempotentConnection>(
    conn: &mut C,
    url: &str,
    action: &Action,
) -> Result<String, Failure> {
    // The primary key is there once the migration ran; a missing table
    // deserves a better sentence than the database's "no such table".
    let table = diesel_idempotent::unique_index_covers(
        conn,
        "idempotency_records",
        &["namespace", "scope", "key"],
    )
    .map_err(|e| admin_error(url, e))?;
    if !table {
        return Err(Failure::Database(format!(
            "the database at {} has no idempotency_records table: create it with \
             diesel_idempotent::migrate(&mut conn), or with \
             `diesel-idempotent migrations --backend <backend> --dir migrations` and \
             `diesel migration run`",
            without_password(url)
        )));
    }
    // The instant this run judges expiry at, the same for every statement.
    let now = ManualClock::new(SystemClock.now());
    let failed = |e| admin_error(url, e);
    match action {
        Action::Show(id) => match admin::find(conn, &id.namespace, &id.scope, &id.key) {
            Ok(Some(record)) => Ok(show(&record, &now)),
            Ok(None) => Err(Failure::NotFound(format!("no record {}", describe(id)))),
            Err(e) => Err(failed(e)),
        },
        Action::List {
            namespace,
            states,
            limit,
        } => {
            let mut lines = Vec::new();
            for &state in states {
                let records =
                    admin::list_with_clock(conn, namespace, state, *limit, &now).map_err(failed)?;
                lines.extend(records.iter().map(|record| list_line(record, &now)));
            }
            if lines.is_empty() {
                eprintln!(
                    "no {} records in namespace {namespace:?}",
                    match states.as_slice() {
                        [RecordState::InFlight] => "in-flight",
                        [RecordState::Completed] => "live completed",
                        _ => "live",
                    }
                );
            }
            Ok(lines.join("\n"))
        }
        Action::Forget(id) => {
            let record = admin::find(conn, &id.namespace, &id.scope, &id.key).map_err(failed)?;
            let forgotten = match record {
                Some(record) => admin::forget(conn, &id.namespace, &id.scope, &id.key)
                    .map_err(failed)?
                    .then_some(record),
                None => None,
            };
            match forgotten {
                Some(record) => Ok(format!(
                    "forgot the {} record {}, created at {}; the next call with this key \
                     runs its body again",
                    state(&record, &now),
                    describe(id),
                    times(&record).0
                )),
                None => Err(Failure::NotFound(format!(
                    "nothing to forget: no record {}",
                    describe(id)
                ))),
            }
        }
        Action::Stats => {
            let stats = admin::stats_with_clock(conn, &now).map_err(failed)?;
            Ok(stats_table(&stats))
        }
        Action::Purge { batch } => purge(conn, *batch, &now).map_err(failed),
    }
}

/// `of key K in namespace N (scope "S")`.
fn describe(id: &RecordId) -> String {
    format!(
        "of key {} in namespace {} (scope {:?})",
        id.key, id.namespace, id.scope
    )
}

/// A record's state at `now`: `expired`, `in-flight` or `completed`.
fn state(record: &IdempotencyRecord, now: &ManualClock) -> &'static str {
    if record.is_expired_at(now.now()) {
        "expired"
    } else if record.is_in_flight() {
        "in-flight"
    } else {
        "completed"
    }
}

/// A record's `created_at` and `expires_at` in RFC 3339, UTC, with the
/// fraction of a second when there is one.
fn times(record: &IdempotencyRecord) -> (String, String) {
    const RFC_3339: &str = "%Y-%m-%dT%H:%M:%S%.fZ";
    (
        record.created_at.format(RFC_3339).to_string(),
        record.expires_at.format(RFC_3339).to_string(),
    )
}

/// `inspect --key`: one `field: value` line per column, and the state.
fn show(record: &IdempotencyRecord, now: &ManualClock) -> String {
    let (created_at, expires_at) = times(record);
    let fields = [
        ("namespace", record.namespace.clone()),
        ("scope", format!("{:?}", record.scope)),
        ("key", record.key.clone()),
        ("state", state(record, now).to_owned()),
        ("fingerprint", record.fingerprint.clone()),
        ("created_at", created_at),
        ("expires_at", expires_at),
        (
            "response",
            record
                .response
                .clone()
                .unwrap_or_else(|| "(none)".to_owned()),
        ),
    ];
    let lines: Vec<String> = fields
        .iter()
        .map(|(name, value)| format!("{:<13}{value}", format!("{name}:")))
        .collect();
    lines.join("\n")
}

/// `inspect` without `--key`: one record as one line.
fn list_line(record: &IdempotencyRecord, now: &ManualClock) -> String {
    let (created_at, expires_at) = times(record);
    format!(
        "state={} key={} scope={:?} created_at={created_at} expires_at={expires_at}",
        state(record, now),
        record.key,
        record.scope,
    )
}

/// `stats`: a header, one row per namespace, a total row.
fn stats_table(stats: &[NamespaceStats]) -> String {
    let total = stats.iter().fold([0u64; 3], |sum, ns| {
        [
            sum[0].saturating_add(ns.live),
            sum[1].saturating_add(ns.in_flight),
            sum[2].saturating_add(ns.expired),
        ]
    });
    let width = stats
        .iter()
        .map(|ns| ns.namespace.chars().count())
        .chain(["namespace".len()])
        .max()
        .unwrap_or_default();
    let row = |name: &str, [live, in_flight, expired]: [String; 3]| {
        format!("{name:<width$}  {live:>10}  {in_flight:>10}  {expired:>10}")
    };
    let numbers = |counts: [u64; 3]| counts.map(|n| n.to_string());
    let mut lines = vec![row(
        "namespace",
        ["live", "in-flight", "expired"].map(str::to_owned),
    )];
    lines.extend(
        stats
            .iter()
            .map(|ns| row(&ns.namespace, numbers([ns.live, ns.in_flight, ns.expired]))),
    );
    lines.push(row("total", numbers(total)));
    lines.join("\n")
}

/// `purge`: batches until one comes back short, each timed; a bar on a
/// terminal; the summary line.
fn purge<C: IdempotentConnection>(
    conn: &mut C,
    batch: usize,
    now: &ManualClock,
) -> Result<String, diesel_idempotent::Error> {
    let bar = match std::io::stderr().is_terminal() {
        true => Some(Bar {
            total: admin::count_expired_with_clock(conn, now)?,
        }),
        false => None,
    };
    let started = Instant::now();
    let mut summary = PurgeSummary {
        purged: 0,
        batches: 0,
        batch_size: batch,
        elapsed: Duration::ZERO,
        longest: Duration::ZERO,
    };
    loop {
        let batch_started = Instant::now();
        let deleted = admin::purge_batch(conn, now.now(), batch)?;
        summary.longest = summary.longest.max(batch_started.elapsed());
        summary.batches += 1;
        summary.purged = summary.purged.saturating_add(deleted as u64);
        summary.elapsed = started.elapsed();
        if let Some(bar) = &bar {
            bar.draw(summary.purged, summary.elapsed);
        }
        if deleted < batch {
            break;
        }
    }
    if bar.is_some() {
        eprintln!();
    }
    Ok(summary.to_string())
}

/// What a purge did, as its summary line says it.
struct PurgeSummary {
    purged: u64,
    batches: u64,
    batch_size: usize,
    elapsed: Duration,
    longest: Duration,
}

impl std::fmt::Display for PurgeSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "purged {} expired {} in {:.1} s ({} rows/s) in {} {} of up to {}; \
             longest batch {} ms",
            self.purged,
            plural(self.purged, "record", "records"),
            self.elapsed.as_secs_f64(),
            rows_per_second(self.purged, self.elapsed),
            self.batches,
            plural(self.batches, "batch", "batches"),
            self.batch_size,
            self.longest.as_millis(),
        )
    }
}

fn plural(n: u64, one: &'static str, many: &'static str) -> &'static str {
    if n == 1 { one } else { many }
}

/// Rows per second, rounded; 0 before any time has passed.
fn rows_per_second(rows: u64, elapsed: Duration) -> u64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 {
        (rows as f64 / secs).round() as u64
    } else {
        0
    }
}

/// The purge's progress on a terminal: one line on stderr, redrawn.
struct Bar {
    /// The expired records counted before the first batch.
    total: u64,
}

impl Bar {
    const WIDTH: u64 = 30;

    fn draw(&self, done: u64, elapsed: Duration) {
        let mut stderr = std::io::stderr().lock();
        let _ = write!(stderr, "\r{}", self.line(done, elapsed));
        let _ = stderr.flush();
    }

    /// `[#####-----]  45% 450000/1000000 rows, 52000 rows/s`
    fn line(&self, done: u64, elapsed: Duration) -> String {
        // Rows expired by the application's own purge meanwhile, or none at
        // all: the bar stays within its frame.
        let total = self.total.max(done).max(1);
        let filled = (done.saturating_mul(Self::WIDTH) / total) as usize;
        let percent = done.saturating_mul(100) / total;
        format!(
            "[{}{}] {percent:>3}% {done}/{} rows, {} rows/s",
            "#".repeat(filled),
            "-".repeat(Self::WIDTH as usize - filled),
            self.total.max(done),
            rows_per_second(done, elapsed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_args(args: &[&str]) -> Result<Command, Failure> {
        parse(args.iter().map(|arg| (*arg).to_owned()))
    }

    #[test]
    fn urls_pick_their_backend() {
        for (url, dialect) in [
            ("postgres://u:p@h/db", Dialect::Postgres),
            ("postgresql://h/db", Dialect::Postgres),
            ("POSTGRES://h/db", Dialect::Postgres),
            ("mysql://root@h:3306/db", Dialect::Mysql),
            ("mariadb://root@h/db", Dialect::Mysql),
            ("/var/lib/app.sqlite3", Dialect::Sqlite),
            ("app.db", Dialect::Sqlite),
            ("sqlite:///var/lib/app.sqlite3", Dialect::Sqlite),
            ("file:app.db?cache=shared", Dialect::Sqlite),
        ] {
            assert_eq!(Dialect::of(url), dialect, "{url}");
        }
    }

    #[test]
    fn passwords_never_show() {
        for (url, shown) in [
            (
                "postgres://app:s3cret@db.internal:5432/app",
                "postgres://app:***@db.internal:5432/app",
            ),
            (
                "postgres://app:p@ss@db/app?sslmode=require",
                "postgres://app:***@db/app?sslmode=require",
            ),
            (
                "postgres://db/app?user=app&password=s3cret",
                "postgres://db/app?user=app&password=***",
            ),
            ("mysql://root@127.0.0.1/app", "mysql://root@127.0.0.1/app"),
            ("/tmp/app.sqlite3", "/tmp/app.sqlite3"),
            (
                "host=db user=app password=s3cret dbname=app",
                "host=db user=app password=*** dbname=app",
            ),
            (
                "host=db PASSWORD='s3 cret' dbname=app",
                "host=db PASSWORD=*** dbname=app",
            ),
        ] {
            assert_eq!(without_password(url), shown);
        }
    }

    #[cfg(feature = "sqlite")]
    #[test]
    fn sqlite_urls_open_existing_files_only() {
        for (url, target) in [
            ("/tmp/app.sqlite3", "file:/tmp/app.sqlite3?mode=rw"),
            ("odd?#%.db", "file:odd%3F%23%25.db?mode=rw"),
            ("sqlite:///tmp/app.db", "file:/tmp/app.db?mode=rw"),
            (
                "file:app.db?cache=shared",
                "file:app.db?cache=shared&mode=rw",
            ),
            ("file:app.db?mode=ro", "file:app.db?mode=ro"),
            (":memory:", ":memory:"),
        ] {
            assert_eq!(sqlite_target(url), target, "{url}");
        }
    }

    #[test]
    fn a_backend_left_out_names_its_feature() {
        let failure = not_built("postgres://app:s3cret@db/app", "PostgreSQL", "postgres");
        assert_eq!(failure.status(), 2);
        assert_eq!(
            failure.to_string(),
            "error: postgres://app:***@db/app is a PostgreSQL URL, and this diesel-idempotent \
             was built without PostgreSQL; rebuild it with the `postgres` feature: cargo install \
             diesel-idempotent --features postgres"
        );
    }

    #[test]
    fn flags_take_values_either_way() {
        let Ok(Command::Database { url, action }) = parse_args(&[
            "inspect",
            "--database-url=db.sqlite3",
            "--namespace",
            "orders.create",
            "--completed",
            "--limit=5",
        ]) else {
            panic!("a list");
        };
        assert_eq!(url, "db.sqlite3");
        assert!(matches!(
            action,
            Action::List { ref namespace, ref states, limit: 5 }
                if namespace == "orders.create" && states == &[RecordState::Completed]
        ));
    }

    #[test]
    fn usage_errors_say_what_is_wrong() {
        for (args, message) in [
            (
                &["inspect", "--database-url", "x"][..],
                "missing --namespace",
            ),
            (
                &["inspect", "--database-url", "x", "--namespace"],
                "--namespace needs a value",
            ),
            (
                &[
                    "inspect",
                    "--database-url",
                    "x",
                    "--namespace",
                    "n",
                    "--key",
                    "k",
                    "--limit",
                    "3",
                ],
                "--key shows one record",
            ),
            (
                &[
                    "inspect",
                    "--database-url",
                    "x",
                    "--namespace",
                    "n",
                    "--in-flight",
                    "--completed",
                ],
                "exclude each other",
            ),
            (
                &["purge", "--database-url", "x", "--batch", "0"],
                "at least 1",
            ),
            (
                &["stats", "--database-url", "x", "--verbose"],
                "unknown argument \"--verbose\" for stats",
            ),
            (
                &["forget", "--database-url", "x", "--namespace", "n"],
                "missing --key",
            ),
            (
                &["stats", "--database-url", "x", "--database-url", "y"],
                "given twice",
            ),
            (&["vacuum"], "unknown command"),
        ] {
            match parse_args(args) {
                Err(Failure::Usage(got)) => assert!(got.contains(message), "{args:?}: {got}"),
                other => panic!("{args:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_summary_line_reads_as_documented() {
        let summary = PurgeSummary {
            purged: 1_000_000,
            batches: 1001,
            batch_size: 1000,
            elapsed: Duration::from_millis(19_200),
            longest: Duration::from_micros(41_700),
        };
        assert_eq!(
            summary.to_string(),
            "purged 1000000 expired records in 19.2 s (52083 rows/s) in 1001 batches of up \
             to 1000; longest batch 41 ms"
        );
        let one = PurgeSummary {
            purged: 1,
            batches: 1,
            batch_size: 1000,
            elapsed: Duration::ZERO,
            longest: Duration::ZERO,
        };
        assert_eq!(
            one.to_string(),
            "purged 1 expired record in 0.0 s (0 rows/s) in 1 batch of up to 1000; \
             longest batch 0 ms"
        );
    }

    #[test]
    fn the_bar_fills_with_the_rows_purged() {
        let bar = Bar { total: 1_000_000 };
        assert_eq!(
            bar.line(450_000, Duration::from_secs(9)),
            "[#############-----------------]  45% 450000/1000000 rows, 50000 rows/s"
        );
        assert_eq!(
            Bar { total: 0 }.line(0, Duration::ZERO),
            "[------------------------------]   0% 0/0 rows, 0 rows/s"
        );
        assert!(
            Bar { total: 10 }
                .line(12, Duration::from_secs(1))
                .starts_with("[##############################] 100% 12/12 rows")
        );
    }

    #[test]
    fn the_stats_table_has_a_total() {
        let stats = [
            NamespaceStats {
                namespace: "orders.create".to_owned(),
                live: 3,
                in_flight: 1,
                expired: 2,
            },
            NamespaceStats {
                namespace: "refunds".to_owned(),
                live: 1,
                in_flight: 0,
                expired: 0,
            },
        ];
        assert_eq!(
            stats_table(&stats),
            "namespace            live   in-flight     expired\n\
             orders.create           3           1           2\n\
             refunds                 1           0           0\n\
             total                   4           1           2"
        );
    }
}
