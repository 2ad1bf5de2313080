//! A small Google IAM on loopback, in front of the shared fake-gcs-server (which checks no
//! credentials at all): service-account keys generated here, an OAuth2 token endpoint, and
//! an authenticating proxy to the emulator.
//!
//! - [`GcpIam::service_account`] generates an RSA key pair, keeps the public half, and
//!   returns the JSON key a user downloads from Google, with `token_uri` pointing here.
//! - `POST /token` is the OAuth2 JWT-bearer grant (RFC 7523), as Google's token endpoint
//!   serves it (as a form, or as the JSON object Kong's lua-resty-gcp posts): the assertion
//!   must be signed by a live key of its `iss`, with `aud` equal to the `token_uri`,
//!   unexpired; it answers an opaque access token.
//! - Every other request goes to fake-gcs-server if its `Authorization: Bearer` is an access
//!   token issued here, or a self-signed JWT (Google accepts these instead of an access
//!   token: signed by a live key named by `kid`, `iss` = `sub` = the account, a `scope` or an
//!   `aud` for storage). Otherwise 401 `Invalid Credentials`; a reader that writes gets 403.
//!   Both answers have the shape of the GCS JSON API's errors.
//!
//! What it does not do: IAM conditions, per-bucket grants, or anything of Google's key
//! rotation; a revoked key refuses at once (Google may take a few minutes).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow};
use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rcgen::SigningKey as _;
use serde_json::{Value, json};

/// What a service account may do on the buckets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// `roles/storage.objectViewer`: GET only.
    Reader,
    /// `roles/storage.objectAdmin`: everything.
    Writer,
}

/// A service-account JSON key, as Google hands it out.
#[derive(Clone)]
pub struct ServiceAccountKey {
    /// The whole JSON document (what goes into `GCP_SERVICE_ACCOUNT`).
    pub json: String,
    pub client_email: String,
    pub key_id: String,
    /// The PEM private key (PKCS #8): to look for in logs, never to print.
    pub private_key_pem: String,
}

impl std::fmt::Debug for ServiceAccountKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccountKey")
            .field("client_email", &self.client_email)
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

struct Key {
    client_email: String,
    /// PKCS #1 RSAPublicKey DER.
    public_der: Vec<u8>,
    revoked: bool,
}

/// What an upload asked for, as the proxy saw it (fake-gcs-server keeps the storage class
/// but not `kmsKeyName`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Upload {
    pub name: String,
    /// The `kmsKeyName` query parameter of objects.insert.
    pub kms_key_name: Option<String>,
    /// `storageClass` of the object resource sent with it.
    pub storage_class: Option<String>,
}

#[derive(Default)]
struct Iam {
    uploads: Vec<Upload>,
    keys: HashMap<String, Key>,
    roles: HashMap<String, Role>,
    /// access token -> key id
    tokens: HashMap<String, String>,
    token_requests: u32,
    token_grants: u32,
    /// Bearer strings accepted or refused by the proxy (to look for in logs).
    bearers: Vec<String>,
    proxied: u32,
    unauthenticated: u32,
    forbidden: u32,
}

/// The IAM and its proxy; dropped with the test.
pub struct GcpIam {
    /// `http://127.0.0.1:<port>`: the value for `STORAGE_EMULATOR_HOST`.
    pub endpoint: String,
    /// The token endpoint written into every key.
    pub token_uri: String,
    state: Arc<Mutex<Iam>>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for GcpIam {
    fn drop(&mut self) {
        self.server.abort();
    }
}

#[derive(Clone)]
struct Shared {
    state: Arc<Mutex<Iam>>,
    upstream: String,
    token_uri: String,
    http: reqwest::Client,
}

impl GcpIam {
    /// Starts the IAM in front of `upstream` (the fake-gcs-server endpoint).
    pub async fn start(upstream: &str) -> Result<GcpIam> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let token_uri = format!("{endpoint}/token");
        let state = Arc::new(Mutex::new(Iam::default()));
        let shared = Shared {
            state: state.clone(),
            upstream: upstream.trim_end_matches('/').to_owned(),
            token_uri: token_uri.clone(),
            http: reqwest::Client::new(),
        };
        let app = Router::new()
            .route("/token", post(token))
            .fallback(proxy)
            .with_state(shared);
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(GcpIam {
            endpoint,
            token_uri,
            state,
            server,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Iam> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new service account `name` with `role` and one live key.
    pub fn service_account(&self, name: &str, role: Role) -> Result<ServiceAccountKey> {
        let (key, public_der) = self.new_key(name)?;
        let mut iam = self.lock();
        iam.roles.insert(key.client_email.clone(), role);
        iam.keys.insert(
            key.key_id.clone(),
            Key {
                client_email: key.client_email.clone(),
                public_der,
                revoked: false,
            },
        );
        Ok(key)
    }

    /// A key that claims to be `of` (same account, same key id) with another key pair
    /// whose public half this IAM has never seen: only the signature check refuses it.
    pub fn unregistered_key(&self, of: &ServiceAccountKey) -> Result<ServiceAccountKey> {
        let name = of.client_email.split('@').next().unwrap_or("sa").to_owned();
        let (mut key, _) = self.new_key(&name)?;
        let mut json: Value = serde_json::from_str(&key.json)?;
        json["private_key_id"] = Value::String(of.key_id.clone());
        key.json = json.to_string();
        key.key_id = of.key_id.clone();
        Ok(key)
    }

    /// Deletes the key: its self-signed tokens and the access tokens issued for it are
    /// refused from now on.
    pub fn revoke(&self, key: &ServiceAccountKey) {
        let mut iam = self.lock();
        if let Some(k) = iam.keys.get_mut(&key.key_id) {
            k.revoked = true;
        }
        iam.tokens.retain(|_, kid| *kid != key.key_id);
    }

    /// How many times `/token` was called, and how many of those granted a token.
    pub fn token_requests(&self) -> (u32, u32) {
        let iam = self.lock();
        (iam.token_requests, iam.token_grants)
    }

    /// Requests passed to the emulator, refused with 401, refused with 403.
    pub fn counts(&self) -> (u32, u32, u32) {
        let iam = self.lock();
        (iam.proxied, iam.unauthenticated, iam.forbidden)
    }

    /// Every authorized objects.insert so far.
    pub fn uploads(&self) -> Vec<Upload> {
        self.lock().uploads.clone()
    }

    /// Every bearer credential presented to the proxy so far (secret values, for leak checks).
    pub fn bearers(&self) -> Vec<String> {
        self.lock().bearers.clone()
    }

    fn new_key(&self, name: &str) -> Result<(ServiceAccountKey, Vec<u8>)> {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256)
            .context("generating an RSA key (rcgen with aws-lc-rs)")?;
        let private_key_pem = pair.serialize_pem();
        let public_der = pair.public_key_raw().to_vec();
        let key_id = hex(&sha2_of(&public_der))[..40].to_owned();
        let client_email = format!("{name}@kfo-test.iam.gserviceaccount.com");
        let json = json!({
            "type": "service_account",
            "project_id": "kfo-test",
            "private_key_id": key_id,
            "private_key": private_key_pem,
            "client_email": client_email,
            "client_id": "100000000000000000001",
            "token_uri": self.token_uri,
            "universe_domain": "googleapis.com"
        })
        .to_string();
        Ok((
            ServiceAccountKey {
                json,
                client_email,
                key_id,
                private_key_pem,
            },
            public_der,
        ))
    }
}

/// Signs `claims` as an RS256 JWT with the key's private half (`kid` = its key id): what
/// a client of the JWT-bearer grant (e.g. Kong's lua-resty-gcp) sends to `token_uri`.
pub fn sign_jwt(key: &ServiceAccountKey, claims: &Value) -> Result<String> {
    let pair =
        rcgen::KeyPair::from_pem_and_sign_algo(&key.private_key_pem, &rcgen::PKCS_RSA_SHA256)?;
    let header = json!({"alg": "RS256", "typ": "JWT", "kid": key.key_id});
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let sig = pair.sign(input.as_bytes())?;
    Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig)))
}

fn sha2_of(data: &[u8]) -> Vec<u8> {
    use sha2::Digest as _;
    sha2::Sha256::digest(data).to_vec()
}

fn hex(data: &[u8]) -> String {
    data.iter().map(|b| format!("{b:02x}")).collect()
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A JWT whose RS256 signature verifies with a live key: (key id, claims). `kid` names the
/// key when present; otherwise every live key of `iss` is tried (as Google does).
fn verify_jwt(iam: &Iam, jwt: &str) -> Result<(String, Value)> {
    let mut parts = jwt.split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(anyhow!("not a JWT"));
    };
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(h)?)?;
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(c)?)?;
    if header["alg"] != "RS256" {
        return Err(anyhow!("alg {} is not RS256", header["alg"]));
    }
    let iss = claims["iss"].as_str().unwrap_or_default();
    let candidates: Vec<(&String, &Key)> = match header["kid"].as_str() {
        Some(kid) => iam.keys.get_key_value(kid).into_iter().collect(),
        None => iam
            .keys
            .iter()
            .filter(|(_, k)| k.client_email == iss)
            .collect(),
    };
    let message = format!("{h}.{c}");
    for (kid, key) in candidates {
        let decoding = jsonwebtoken::DecodingKey::from_rsa_der(&key.public_der);
        let ok = jsonwebtoken::crypto::verify(
            s,
            message.as_bytes(),
            &decoding,
            jsonwebtoken::Algorithm::RS256,
        )
        .unwrap_or(false);
        if !ok {
            continue;
        }
        if key.revoked {
            return Err(anyhow!("key {kid} of {} is deleted", key.client_email));
        }
        if key.client_email != iss {
            return Err(anyhow!("key {kid} does not belong to {iss}"));
        }
        let exp = claims["exp"].as_i64().unwrap_or(0);
        let iat = claims["iat"].as_i64().unwrap_or(i64::MAX);
        let t = now();
        if exp <= t || iat > t + 60 || exp - iat > 3600 + 120 {
            return Err(anyhow!("expired or not yet valid (iat {iat}, exp {exp})"));
        }
        return Ok((kid.clone(), claims));
    }
    Err(anyhow!("Invalid JWT Signature."))
}

/// The JWT-bearer grant.
async fn token(State(s): State<Shared>, body: axum::body::Bytes) -> Response {
    // NB: Kong's lua-resty-gcp posts the grant as a JSON object, not as a form.
    let form: HashMap<String, String> = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(o)) => o
            .into_iter()
            .filter_map(|(k, v)| Some((k, v.as_str()?.to_owned())))
            .collect(),
        _ => form_pairs(&body),
    };
    let mut iam = s.state.lock().unwrap_or_else(|e| e.into_inner());
    iam.token_requests += 1;
    let refuse = |msg: &str| {
        (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "invalid_grant", "error_description": msg})),
        )
            .into_response()
    };
    if form.get("grant_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
    {
        return refuse("unsupported grant_type");
    }
    let Some(assertion) = form.get("assertion") else {
        return refuse("no assertion");
    };
    let (kid, claims) = match verify_jwt(&iam, assertion) {
        Ok(v) => v,
        Err(e) => return refuse(&e.to_string()),
    };
    if claims["aud"].as_str() != Some(s.token_uri.as_str()) {
        return refuse(
            "Invalid JWT: Token must be a short-lived token and in a reasonable timeframe (aud)",
        );
    }
    if claims["scope"].as_str().is_none_or(str::is_empty) {
        return refuse("Invalid JWT: no scope");
    }
    iam.token_grants += 1;
    let access = format!(
        "ya29.kfo{}",
        &hex(&sha2_of(
            format!("{assertion}{}", iam.token_grants).as_bytes()
        ))[..48]
    );
    iam.tokens.insert(access.clone(), kid);
    axum::Json(json!({"access_token": access, "expires_in": 3599, "token_type": "Bearer"}))
        .into_response()
}

/// `application/x-www-form-urlencoded` pairs.
fn form_pairs(body: &[u8]) -> HashMap<String, String> {
    fn decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz");
                    match u8::from_str_radix(hex, 16) {
                        Ok(b) => {
                            out.push(b);
                            i += 2;
                        }
                        Err(_) => out.push(b'%'),
                    }
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    String::from_utf8_lossy(body)
        .split('&')
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

fn gcs_error(status: StatusCode, reason: &str, message: &str) -> Response {
    let body = json!({"error": {
        "code": status.as_u16(),
        "message": message,
        "errors": [{"message": message, "domain": "global", "reason": reason}]
    }});
    (status, axum::Json(body)).into_response()
}

/// Who the bearer credential is: (account, role), or why not.
fn authenticate(iam: &mut Iam, headers: &HeaderMap) -> Result<(String, Role), String> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or("no bearer credential")?
        .to_owned();
    iam.bearers.push(bearer.clone());
    let kid = if let Some(kid) = iam.tokens.get(&bearer) {
        kid.clone()
    } else {
        let (kid, claims) = verify_jwt(iam, &bearer).map_err(|e| e.to_string())?;
        let iss = claims["iss"].as_str().unwrap_or_default();
        if claims["sub"].as_str() != Some(iss) {
            return Err("a self-signed JWT needs sub = iss".into());
        }
        let scoped = claims["scope"].as_str().is_some_and(|s| {
            s.split(' ').any(|s| {
                s == "https://www.googleapis.com/auth/cloud-platform"
                    || s.starts_with("https://www.googleapis.com/auth/devstorage.")
            })
        });
        let audience = claims["aud"]
            .as_str()
            .is_some_and(|a| a.trim_end_matches('/') == "https://storage.googleapis.com");
        if !scoped && !audience {
            return Err("a self-signed JWT needs a storage scope or audience".into());
        }
        kid
    };
    let email = iam
        .keys
        .get(&kid)
        .map(|k| k.client_email.clone())
        .unwrap_or_default();
    let role = iam.roles.get(&email).copied().ok_or("unknown account")?;
    Ok((email, role))
}

async fn proxy(State(s): State<Shared>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let who = {
        let mut iam = s.state.lock().unwrap_or_else(|e| e.into_inner());
        let who = authenticate(&mut iam, &parts.headers);
        // NB: who and why, never the credential itself.
        eprintln!(
            "gcp-iam: {} {} -> {:?}",
            parts.method,
            parts.uri.path(),
            who.as_ref().map(|(email, _)| email)
        );
        match &who {
            Err(_) => iam.unauthenticated += 1,
            Ok((_, Role::Reader)) if !matches!(parts.method, Method::GET | Method::HEAD) => {
                iam.forbidden += 1
            }
            Ok(_) => iam.proxied += 1,
        }
        who
    };
    match who {
        // NB: the reason stays out of the answer, as with Google: "Invalid Credentials".
        Err(_) => return gcs_error(StatusCode::UNAUTHORIZED, "authError", "Invalid Credentials"),
        Ok((email, Role::Reader)) if !matches!(parts.method, Method::GET | Method::HEAD) => {
            return gcs_error(
                StatusCode::FORBIDDEN,
                "forbidden",
                &format!("{email} does not have storage.objects.create access"),
            );
        }
        Ok(_) => {}
    }
    let Ok(body) = to_bytes(body, 256 << 20).await else {
        return gcs_error(StatusCode::PAYLOAD_TOO_LARGE, "tooLarge", "body too large");
    };
    if parts.method == Method::POST && parts.uri.path().starts_with("/upload/storage/v1/b/") {
        let upload = upload(parts.uri.query().unwrap_or_default(), &body);
        s.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .uploads
            .push(upload);
    }
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut fwd = s
        .http
        .request(parts.method.clone(), format!("{}{path}", s.upstream));
    for (name, value) in &parts.headers {
        if name != header::HOST && name != header::AUTHORIZATION && name != header::CONTENT_LENGTH {
            fwd = fwd.header(name, value);
        }
    }
    let resp = match fwd.body(body).send().await {
        Ok(r) => r,
        Err(e) => return gcs_error(StatusCode::BAD_GATEWAY, "backendError", &e.to_string()),
    };
    let mut out = Response::builder().status(resp.status().as_u16());
    for (name, value) in resp.headers() {
        if name != header::CONTENT_LENGTH && name != header::TRANSFER_ENCODING {
            out = out.header(name, value);
        }
    }
    let bytes = resp.bytes().await.unwrap_or_default();
    out.body(Body::from(bytes))
        .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response())
}

/// An upload's name, KMS key and storage class: from the query, and from the object
/// resource (the JSON body of a resumable start, or the first part of a multipart body).
fn upload(query: &str, body: &[u8]) -> Upload {
    let q = form_pairs(query.as_bytes());
    let text = String::from_utf8_lossy(body);
    let resource = if text.trim_start().starts_with('{') {
        serde_json::from_str::<Value>(&text).ok()
    } else {
        // multipart/related: headers, a blank line, the JSON part, then the next boundary.
        text.split_once("\r\n\r\n")
            .and_then(|(_, rest)| rest.split_once("\r\n--"))
            .and_then(|(json, _)| serde_json::from_str::<Value>(json).ok())
    }
    .unwrap_or(Value::Null);
    let field = |k: &str| resource[k].as_str().map(str::to_owned);
    Upload {
        name: q
            .get("name")
            .cloned()
            .or_else(|| field("name"))
            .unwrap_or_default(),
        kms_key_name: q.get("kmsKeyName").cloned().or_else(|| field("kmsKeyName")),
        storage_class: field("storageClass"),
    }
}
