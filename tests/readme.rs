//! What README.md says that a doc test cannot check: its error table has a
//! row for every variant of `Error`, and this repository's `migrations/`
//! folder (which the README's `embed_migrations!("migrations")` example
//! compiles against) holds exactly what the Diesel CLI route writes.

use std::path::Path;

use diesel_idempotent::migrations::{Backend, MIGRATION_NAME, SCHEMA_VERSION};

fn read(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("cannot read {}: {e}", full.display()))
}

/// The variant names of `pub enum Error`, read from its source: the lines
/// indented once that start with a capital letter.
fn error_variants() -> Vec<String> {
    let source = read("idempotent-core/src/error.rs");
    let body = source
        .split_once("pub enum Error {")
        .expect("idempotent-core/src/error.rs declares `pub enum Error`")
        .1;
    let body = &body[..body.find("\n}").expect("the enum's closing brace")];
    body.lines()
        .filter_map(|line| line.strip_prefix("    "))
        .filter(|line| line.starts_with(|c: char| c.is_ascii_uppercase()))
        .map(|line| {
            line.split(|c: char| !c.is_ascii_alphanumeric())
                .next()
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

#[test]
fn error_table_has_a_row_for_every_variant() {
    let variants = error_variants();
    assert!(
        variants.len() >= 12,
        "expected at least 12 variants of Error, read {variants:?}"
    );
    let readme = read("README.md");
    let missing: Vec<&String> = variants
        .iter()
        .filter(|v| !readme.contains(&format!("| `{v}` |")))
        .collect();
    assert!(
        missing.is_empty(),
        "README.md's error table has no row for {missing:?}: add `| `Variant` | meaning | answer |`"
    );
}

#[test]
fn sample_migrations_folder_is_what_the_cli_route_writes() {
    let regenerate = "rm -r migrations && cargo run --no-default-features -- migrations \
                      --backend postgres --dir migrations";
    let migrations = Backend::Postgres.migrations();
    assert_eq!(
        migrations[0].folder_name(),
        format!("{SCHEMA_VERSION}_{MIGRATION_NAME}"),
        "the record table's migration comes first"
    );
    for migration in migrations {
        let folder = format!("migrations/{}", migration.folder_name());
        assert_eq!(
            read(&format!("{folder}/up.sql")),
            migration.up_sql,
            "{folder}/up.sql is stale; regenerate it: {regenerate}"
        );
        assert_eq!(
            read(&format!("{folder}/down.sql")),
            migration.down_sql,
            "{folder}/down.sql is stale; regenerate it: {regenerate}"
        );
    }
    let entries = std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations"))
        .expect("migrations/ exists")
        .count();
    assert_eq!(
        entries,
        migrations.len(),
        "migrations/ holds only the library's migrations; {regenerate}"
    );
}
