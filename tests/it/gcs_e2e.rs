//! GCS end to end (#15): the operator and `doctor` against fake-gcs-server, reached through
//! `STORAGE_EMULATOR_HOST`, with real service-account JSON keys checked by a small Google
//! IAM on loopback ([`kfo_testenv::GcpIam`]: token endpoint + authenticating proxy).
//!
//! NB: google-cloud-auth 1.18 never calls a key's `token_uri`: its service-account
//! credentials sign a JWT themselves (RS256, `kid` = the key id, `iss` = `sub` = the
//! account, `scope` = cloud-platform) and send it as the bearer token, which Google's APIs
//! accept in place of an access token (`src/credentials/service_account.rs`,
//! `ServiceAccountTokenProvider::token`). So what is tested for the operator is that JWT,
//! verified by the proxy with the key's public half, and that `/token` is never called;
//! the JWT-bearer exchange itself (what Kong's lua-resty-gcp does) is tested once, from
//! the test, in [`the_iam_double_checks_both_ways_a_key_becomes_a_credential`].

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use kfo_testenv::{GcpIam, Role, ServiceAccountKey, gcs, sign_jwt};
use kong_fallback_operator::storage::gcs::{GcsCredentials, GcsStore};
use kong_fallback_operator::storage::{ErrorKind, ObjectStore, Precondition, PutObject};
use serde_json::json;

fn put(key: &str, body: &'static str) -> PutObject {
    PutObject {
        key: key.into(),
        body: Bytes::from_static(body.as_bytes()),
        content_type: "application/json".into(),
        metadata: BTreeMap::new(),
        precondition: Precondition::None,
    }
}

/// The product's store on `bucket` through the IAM's proxy, with `key`.
async fn store(iam: &GcpIam, key: &ServiceAccountKey, bucket: &str) -> GcsStore {
    GcsStore::new(
        Some(&iam.endpoint),
        &GcsCredentials::ServiceAccountJson(key.json.clone()),
        bucket,
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn a_service_account_key_signs_its_own_jwt_which_the_store_checks_and_token_uri_is_never_called()
 {
    let env = gcs().await;
    let bucket = env.bucket("gcs-sa").await.unwrap();
    let iam = GcpIam::start(&env.endpoint).await.unwrap();
    let writer = iam.service_account("kfo-writer", Role::Writer).unwrap();
    let reader = iam.service_account("kfo-reader", Role::Reader).unwrap();

    let w = store(&iam, &writer, &bucket).await;
    w.put(put("p/3.6.1.4/config.json", "{}")).await.unwrap();
    assert!(w.touch("p/3.6.1.4/config.json").await.unwrap());
    let r = store(&iam, &reader, &bucket).await;
    assert_eq!(r.list("p/").await.unwrap().len(), 1);
    assert!(r.get("p/3.6.1.4/config.json").await.unwrap().is_some());
    let e = r.put(put("p/x", "{}")).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Credentials, "a reader's write: {e}");

    // A key the account does not have, and a deleted key: refused (401).
    let wrong = iam.unregistered_key(&reader).unwrap();
    let e = store(&iam, &wrong, &bucket)
        .await
        .list("p/")
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Credentials, "{e}");
    iam.revoke(&writer);
    let e = w.head("p/3.6.1.4/config.json").await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Credentials, "{e}");

    let (proxied, unauthenticated, forbidden) = iam.counts();
    assert!(proxied >= 4, "{proxied}");
    assert_eq!((unauthenticated, forbidden), (2, 1));
    assert_eq!(
        iam.token_requests(),
        (0, 0),
        "google-cloud-auth called token_uri: it no longer self-signs; test the exchange instead"
    );
    // The bearer credentials were self-signed JWTs naming the key.
    let bearers = iam.bearers();
    assert!(
        bearers.iter().all(|b| b.split('.').count() == 3),
        "not JWTs: {} bearers",
        bearers.len()
    );
}

#[tokio::test]
async fn the_iam_double_checks_both_ways_a_key_becomes_a_credential() {
    let env = gcs().await;
    let bucket = env.bucket("gcs-token").await.unwrap();
    let iam = GcpIam::start(&env.endpoint).await.unwrap();
    let key = iam.service_account("kong-dp", Role::Reader).unwrap();
    let http = reqwest::Client::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let assertion = |key: &ServiceAccountKey, aud: &str| {
        sign_jwt(
            key,
            &json!({"iss": key.client_email, "aud": aud,
                    "scope": "https://www.googleapis.com/auth/devstorage.read_only",
                    "iat": now, "exp": now + 3600}),
        )
        .unwrap()
    };
    let exchange = async |assertion: String| {
        let resp = http
            .post(&iam.token_uri)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!(
                "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={assertion}"
            ))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json::<serde_json::Value>().await.unwrap())
    };
    let list = async |token: &str| {
        http.get(format!("{}/storage/v1/b/{bucket}/o", iam.endpoint))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };

    // The JWT-bearer grant: the key's own assertion gets an access token that lists.
    let (status, body) = exchange(assertion(&key, &iam.token_uri)).await;
    assert_eq!(status, 200, "{body}");
    let token = body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(list(&token).await, 200);
    // Signed by another key, or for another audience: no token.
    let wrong = iam.unregistered_key(&key).unwrap();
    let (status, body) = exchange(assertion(&wrong, &iam.token_uri)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    let (status, _) = exchange(assertion(&key, "https://example.invalid/token")).await;
    assert_eq!(status, 400);
    // A self-signed JWT for storage works as a bearer as it is; an unsigned one does not.
    let self_signed = sign_jwt(
        &key,
        &json!({"iss": key.client_email, "sub": key.client_email,
                "aud": "https://storage.googleapis.com/", "iat": now, "exp": now + 3600}),
    )
    .unwrap();
    assert_eq!(list(&self_signed).await, 200);
    let mut forged: Vec<&str> = self_signed.split('.').collect();
    forged[2] = "AAAA";
    assert_eq!(list(&forged.join(".")).await, 401);
    // The key is deleted: its access token and its JWTs stop working.
    iam.revoke(&key);
    assert_eq!(list(&token).await, 401);
    assert_eq!(list(&self_signed).await, 401);
    assert_eq!(iam.token_requests(), (3, 1));
}
