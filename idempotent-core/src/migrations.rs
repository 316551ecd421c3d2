//! The library's tables: embedded migrations run from code, and the same
//! SQL written out as Diesel CLI migration folders.
//!
//! Three tables, one migration each ([`Backend::migrations`]): the records
//! ([`SCHEMA_VERSION`]), the outbox ([`OUTBOX_SCHEMA_VERSION`]) and the
//! phased calls ([`PHASED_SCHEMA_VERSION`]). The embedded and the written
//! migrations carry the same versions, so a database migrated one way is up
//! to date the other way too; the SQL uses `IF NOT EXISTS`, so running both
//! is harmless.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The version of the record table's migration (Diesel's version column).
pub const SCHEMA_VERSION: &str = "2026-11-24-000000";
/// The migration's name, after the version.
pub const MIGRATION_NAME: &str = "create_idempotency_records";

/// A SQL dialect the record table can be created for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Backend {
    /// SQLite 3.24 or later.
    Sqlite,
    /// PostgreSQL 11 or later, and engines compatible with it.
    Postgres,
    /// MySQL 8 or MariaDB 10.5 or later (InnoDB).
    Mysql,
}

impl Backend {
    /// Every backend, in documentation order.
    pub const ALL: [Backend; 3] = [Backend::Sqlite, Backend::Postgres, Backend::Mysql];

    /// The name used on the command line: `sqlite` or `postgres`.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
            Backend::Mysql => "mysql",
        }
    }

    /// The record table migration's `up.sql`.
    pub fn up_sql(self) -> &'static str {
        self.migrations()[0].up_sql
    }

    /// The record table migration's `down.sql`.
    pub fn down_sql(self) -> &'static str {
        self.migrations()[0].down_sql
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Backend {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "sqlite" | "sqlite3" => Ok(Backend::Sqlite),
            "postgres" | "postgresql" | "pg" => Ok(Backend::Postgres),
            "mysql" | "mariadb" => Ok(Backend::Mysql),
            other => Err(format!(
                "unknown backend {other:?}; expected one of: sqlite, postgres, mysql"
            )),
        }
    }
}

/// One of the library's migrations, as the Diesel CLI folder
/// `<version>_<name>/{up,down}.sql` holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migration {
    /// Diesel's version column: the folder name's prefix.
    pub version: &'static str,
    /// The folder name after the version.
    pub name: &'static str,
    /// `up.sql`.
    pub up_sql: &'static str,
    /// `down.sql`.
    pub down_sql: &'static str,
}

impl Migration {
    /// The Diesel CLI folder's name: `<version>_<name>`.
    pub fn folder_name(&self) -> String {
        format!("{}_{}", self.version, self.name)
    }
}

/// The outbox table's migration: its version and name.
pub const OUTBOX_SCHEMA_VERSION: &str = "2026-11-26-000000";
/// The outbox migration's name, after the version.
pub const OUTBOX_MIGRATION_NAME: &str = "create_idempotency_outbox";
/// The phased-call table's migration: its version and name.
pub const PHASED_SCHEMA_VERSION: &str = "2026-11-26-000001";
/// The phased-call migration's name, after the version.
pub const PHASED_MIGRATION_NAME: &str = "create_idempotency_phased_calls";

/// The migrations of one dialect, in order; `$dir` is the dialect's folder
/// under `idempotent-core/migrations`.
macro_rules! dialect_migrations {
    ($dir:literal) => {
        [
            Migration {
                version: SCHEMA_VERSION,
                name: MIGRATION_NAME,
                up_sql: include_str!(concat!(
                    "../migrations/",
                    $dir,
                    "/2026-11-24-000000_create_idempotency_records/up.sql"
                )),
                down_sql: include_str!(concat!(
                    "../migrations/",
                    $dir,
                    "/2026-11-24-000000_create_idempotency_records/down.sql"
                )),
            },
            Migration {
                version: OUTBOX_SCHEMA_VERSION,
                name: OUTBOX_MIGRATION_NAME,
                up_sql: include_str!(concat!(
                    "../migrations/",
                    $dir,
                    "/2026-11-26-000000_create_idempotency_outbox/up.sql"
                )),
                down_sql: include_str!(concat!(
                    "../migrations/",
                    $dir,
                    "/2026-11-26-000000_create_idempotency_outbox/down.sql"
                )),
            },
            Migration {
                version: PHASED_SCHEMA_VERSION,
                name: PHASED_MIGRATION_NAME,
                up_sql: include_str!(concat!(
                    "../migrations/",
                    $dir,
                    "/2026-11-26-000001_create_idempotency_phased_calls/up.sql"
                )),
                down_sql: include_str!(concat!(
                    "../migrations/",
                    $dir,
                    "/2026-11-26-000001_create_idempotency_phased_calls/down.sql"
                )),
            },
        ]
    };
}

const SQLITE_MIGRATIONS: [Migration; 3] = dialect_migrations!("sqlite");
const POSTGRES_MIGRATIONS: [Migration; 3] = dialect_migrations!("postgres");
const MYSQL_MIGRATIONS: [Migration; 3] = dialect_migrations!("mysql");

impl Backend {
    /// Every migration of the library for this backend, oldest first: the
    /// record table ([`SCHEMA_VERSION`]), the outbox
    /// ([`OUTBOX_SCHEMA_VERSION`], `crate::outbox`) and the phased calls
    /// ([`PHASED_SCHEMA_VERSION`], `crate::phased`). The embedded
    /// migrations are the same ones.
    pub fn migrations(self) -> &'static [Migration] {
        match self {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
            Backend::Mysql => &MYSQL_MIGRATIONS,
        }
    }
}

/// Writes every migration of the library for `backend` as a Diesel CLI
/// folder under `dir` ([`Backend::migrations`]:
/// `<dir>/<SCHEMA_VERSION>_create_idempotency_records/{up,down}.sql`, then
/// the outbox's and the phased calls'), creating `dir` if needed, and
/// returns the record table's folder (the others sit beside it).
///
/// Apply them with `diesel migration run` like the rest of your migrations.
/// Writing again is a no-op; a folder whose files differ (edited by hand) is
/// left alone and reported as an error of kind `AlreadyExists`, before
/// anything is written.
pub fn write_diesel_cli_migrations(backend: Backend, dir: &Path) -> io::Result<PathBuf> {
    let folders: Vec<(PathBuf, &Migration)> = backend
        .migrations()
        .iter()
        .map(|migration| (dir.join(migration.folder_name()), migration))
        .collect();
    // Every file is checked before one is written, so an edited folder
    // leaves the directory as it was.
    for (folder, migration) in &folders {
        for (file, sql) in [
            ("up.sql", migration.up_sql),
            ("down.sql", migration.down_sql),
        ] {
            let path = folder.join(file);
            match fs::read_to_string(&path) {
                Ok(existing) if existing == sql => {}
                Ok(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        format!(
                            "{} exists with other content; move it away to regenerate it",
                            path.display()
                        ),
                    ));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    for (folder, migration) in &folders {
        fs::create_dir_all(folder)?;
        for (file, sql) in [
            ("up.sql", migration.up_sql),
            ("down.sql", migration.down_sql),
        ] {
            let path = folder.join(file);
            if !path.exists() {
                fs::write(&path, sql)?;
            }
        }
    }
    Ok(dir.join(format!("{SCHEMA_VERSION}_{MIGRATION_NAME}")))
}

#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
pub(crate) fn run_embedded<DB, H>(
    conn: &mut H,
    source: diesel_migrations::EmbeddedMigrations,
) -> Result<usize, crate::Error>
where
    DB: diesel::backend::Backend,
    H: diesel_migrations::MigrationHarness<DB>,
{
    conn.run_pending_migrations(source)
        .map(|applied| applied.len())
        .map_err(|e| crate::Error::Migration(e.to_string()))
}
