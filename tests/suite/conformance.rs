//! Cloudflare's own clients against the local D1: the `cloudflare` npm SDK and wrangler 4, both
//! pinned in scripts/local-d1-server/package.json, run their checks with node's test runner
//! (scripts/local-d1-server/conformance/). Where a client and our server disagree, the server is
//! wrong.

use std::process::Command;

use crate::harness::{repo, LocalD1, ACCOUNT, TOKEN};

/// Runs one conformance file against a fresh database of the shared local D1.
fn node_test(file: &str) {
    let d1 = LocalD1::shared();
    let db = d1.fresh_database();
    let server = repo().join("scripts/local-d1-server");
    let out = Command::new(server.join("node_modules/.bin/node"))
        .arg("--test")
        .arg("--test-reporter=spec")
        .arg(server.join("conformance").join(file))
        .current_dir(&server)
        .env("LOCAL_D1_URL", &d1.api_url)
        .env("LOCAL_D1_TOKEN", TOKEN)
        .env("LOCAL_D1_ACCOUNT", ACCOUNT)
        .env("LOCAL_D1_DATABASE", &db)
        .output()
        .expect("node runs (scripts/local-d1 --install installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{file} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("fail 0"), "{stdout}");
}

#[test]
fn the_cloudflare_sdk_agrees_with_the_local_d1() {
    node_test("sdk.test.mjs");
}

#[test]
fn wrangler_agrees_with_the_local_d1() {
    node_test("wrangler.test.mjs");
}
