//! The attribute as a compiler: every supported shape compiles and runs
//! (`ui/pass`), every misuse is a pointed compile error (`ui/fail`).
//!
//! The `.stderr` files are pinned to the toolchain in `rust-toolchain.toml`;
//! after an intended change of a message, regenerate them with
//! `TRYBUILD=overwrite cargo test --test ui` and review the diff.

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.pass("tests/ui/pass/*.rs");
    cases.compile_fail("tests/ui/fail/*.rs");
}
