//! `diesel-idempotent`: writes the record table's migration as a Diesel CLI
//! migration folder.
//!
//! ```text
//! diesel-idempotent migrations --backend postgres [--dir migrations]
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use diesel_idempotent::migrations::{Backend, write_diesel_cli_migrations};

const USAGE: &str = "\
usage: diesel-idempotent migrations --backend <sqlite|postgres|mysql> [--dir <migrations dir>]

Writes <dir>/<version>_create_idempotency_records/{up,down}.sql for the backend
(default dir: ./migrations); apply it with `diesel migration run`.";

fn main() -> ExitCode {
    match run(std::env::args().skip(1).collect()) {
        Ok(message) => {
            println!("{message}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("error: {message}\n\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Vec<String>) -> Result<String, String> {
    let mut args = args.into_iter();
    match args.next().as_deref() {
        Some("migrations") => {}
        Some("-h" | "--help") => return Ok(USAGE.to_owned()),
        Some(other) => return Err(format!("unknown command {other:?}")),
        None => return Err("missing command".to_owned()),
    }
    let mut backend: Option<Backend> = None;
    let mut dir = PathBuf::from("migrations");
    while let Some(arg) = args.next() {
        let mut value = |flag: &str| args.next().ok_or_else(|| format!("{flag} needs a value"));
        match arg.as_str() {
            "--backend" => backend = Some(value("--backend")?.parse()?),
            "--dir" => dir = PathBuf::from(value("--dir")?),
            "-h" | "--help" => return Ok(USAGE.to_owned()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let backend = backend.ok_or("missing --backend (sqlite, postgres or mysql)")?;
    let folder = write_diesel_cli_migrations(backend, &dir)
        .map_err(|e| format!("could not write into {}: {e}", dir.display()))?;
    Ok(format!("wrote {}", folder.display()))
}
