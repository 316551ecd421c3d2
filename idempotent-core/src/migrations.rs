//! The record table's schema: embedded migrations run from code, and the same
//! SQL written out as Diesel CLI migration folders.
//!
//! Both carry the version [`SCHEMA_VERSION`], so a database migrated one way
//! is up to date the other way too; the SQL uses `IF NOT EXISTS`, so running
//! both is harmless.

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

    /// The migration's `up.sql`.
    pub fn up_sql(self) -> &'static str {
        match self {
            Backend::Sqlite => include_str!(
                "../migrations/sqlite/2026-11-24-000000_create_idempotency_records/up.sql"
            ),
            Backend::Postgres => include_str!(
                "../migrations/postgres/2026-11-24-000000_create_idempotency_records/up.sql"
            ),
            Backend::Mysql => include_str!(
                "../migrations/mysql/2026-11-24-000000_create_idempotency_records/up.sql"
            ),
        }
    }

    /// The migration's `down.sql`.
    pub fn down_sql(self) -> &'static str {
        match self {
            Backend::Sqlite => include_str!(
                "../migrations/sqlite/2026-11-24-000000_create_idempotency_records/down.sql"
            ),
            Backend::Postgres => include_str!(
                "../migrations/postgres/2026-11-24-000000_create_idempotency_records/down.sql"
            ),
            Backend::Mysql => include_str!(
                "../migrations/mysql/2026-11-24-000000_create_idempotency_records/down.sql"
            ),
        }
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

/// Writes `<dir>/<SCHEMA_VERSION>_create_idempotency_records/{up,down}.sql`
/// for `backend`, creating `dir` if needed, and returns the folder's path.
///
/// Apply it with `diesel migration run` like the rest of your migrations.
/// Writing again is a no-op; a folder whose files differ (edited by hand) is
/// left alone and reported as an error of kind `AlreadyExists`.
pub fn write_diesel_cli_migrations(backend: Backend, dir: &Path) -> io::Result<PathBuf> {
    let folder = dir.join(format!("{SCHEMA_VERSION}_{MIGRATION_NAME}"));
    fs::create_dir_all(&folder)?;
    for (file, sql) in [
        ("up.sql", backend.up_sql()),
        ("down.sql", backend.down_sql()),
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
            Err(e) if e.kind() == io::ErrorKind::NotFound => fs::write(&path, sql)?,
            Err(e) => return Err(e),
        }
    }
    Ok(folder)
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
