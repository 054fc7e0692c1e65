//! Compile-time behaviour of `#[idempotent]`: every supported function shape compiles and runs
//! once per key, and every misuse is an error that points at the offending tokens.

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.pass("tests/ui/pass-*.rs");
    cases.compile_fail("tests/ui/fail-*.rs");
}
