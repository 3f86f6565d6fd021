//! Who is calling over HTTP, and which profile they get.
//!
//! The operator writes an auth file (`warden serve --auth FILE`): roles that name a profile,
//! static bearer tokens stored only as sha256 digests, and optionally JWT validation against a
//! JWKS file. A request's principal is the token's configured name or the JWT's subject; its
//! profile is that of the first role (in file order) the principal holds. Nothing a client sends
//! can widen that: profiles change only when the operator edits files and reloads.

pub mod middleware;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Largest clock skew accepted for `exp` and `nbf`.
pub const MAX_LEEWAY_SECONDS: u64 = 300;

/// Longest principal (JWT subject) accepted. A principal names its owner in every audit line,
/// session and artifact; an IdP that issues longer subjects is refused rather than logged in
/// part, so two principals can never look alike in the log.
pub const MAX_PRINCIPAL_BYTES: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("reading auth file {path:?}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("auth file {path:?}: {message}")]
    Invalid { path: PathBuf, message: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthFile {
    #[serde(default)]
    roles: Vec<RoleSpec>,
    #[serde(default)]
    tokens: Vec<TokenSpec>,
    jwt: Option<JwtSpec>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleSpec {
    pub name: String,
    /// An embedded profile name or a path (relative to the auth file).
    pub profile: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenSpec {
    principal: String,
    /// Hex sha256 of the token: `printf %s TOKEN | sha256sum`.
    sha256: String,
    roles: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JwtSpec {
    /// A JWKS file (relative to the auth file).
    jwks: PathBuf,
    issuer: String,
    audience: String,
    #[serde(default = "default_algorithms")]
    algorithms: Vec<String>,
    #[serde(default = "default_leeway")]
    leeway_seconds: u64,
    #[serde(default = "default_principal_claim")]
    principal_claim: String,
    #[serde(default = "default_roles_claim")]
    roles_claim: String,
}

fn default_algorithms() -> Vec<String> {
    vec!["RS256".into(), "ES256".into(), "EdDSA".into()]
}
fn default_leeway() -> u64 {
    60
}
fn default_principal_claim() -> String {
    "sub".into()
}
fn default_roles_claim() -> String {
    "roles".into()
}

struct Token {
    principal: String,
    digest: [u8; 32],
    roles: Vec<String>,
}

struct Jwt {
    jwks_path: PathBuf,
    keys: JwkSet,
    validation: Validation,
    principal_claim: String,
    roles_claim: String,
    issuer: String,
}

/// A loaded, validated auth file.
pub struct AuthConfig {
    pub source: PathBuf,
    pub sha256: String,
    pub roles: Vec<RoleSpec>,
    /// Role → loaded profile name, filled in by the server once the profiles are loaded.
    profile_names: BTreeMap<String, String>,
    tokens: Vec<Token>,
    jwt: Option<Jwt>,
}

/// How a request was authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Bearer,
    Jwt,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Bearer => "bearer",
            Method::Jwt => "jwt",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Authenticated and mapped to a profile.
    Allow { principal: String, method: Method, role: String, profile: String },
    /// No credentials, or credentials that do not verify: 401.
    Unauthenticated { reason: String },
    /// A verified principal with no role that maps to a profile: 403.
    Forbidden { principal: String, method: Method, reason: String },
}

/// What the auth layer attaches to an admitted request.
#[derive(Clone, Debug)]
pub struct AuthContext {
    pub principal: String,
    pub profile: String,
}

fn parse_alg(s: &str) -> Option<Algorithm> {
    Some(match s {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        _ => return None,
    })
}

impl AuthConfig {
    pub fn load(path: &Path) -> Result<AuthConfig, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read { path: path.into(), source })?;
        let invalid = |message: String| AuthError::Invalid { path: path.into(), message };
        let file: AuthFile = toml::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut role_names = Vec::new();
        for r in &file.roles {
            if role_names.contains(&r.name) {
                return Err(invalid(format!("role {:?} is defined twice", r.name)));
            }
            role_names.push(r.name.clone());
        }
        let mut tokens = Vec::new();
        for t in &file.tokens {
            let digest: [u8; 32] = hex::decode(&t.sha256)
                .ok()
                .and_then(|d| d.try_into().ok())
                .ok_or_else(|| invalid(format!("token for {:?}: sha256 must be 64 hex digits", t.principal)))?;
            for role in &t.roles {
                if !role_names.contains(role) {
                    return Err(invalid(format!("token for {:?} names unknown role {role:?}", t.principal)));
                }
            }
            if t.principal.is_empty() {
                return Err(invalid("a token has an empty principal".into()));
            }
            tokens.push(Token { principal: t.principal.clone(), digest, roles: t.roles.clone() });
        }
        let jwt = match file.jwt {
            None => None,
            Some(j) => {
                if j.leeway_seconds > MAX_LEEWAY_SECONDS {
                    return Err(invalid(format!("jwt.leeway_seconds is at most {MAX_LEEWAY_SECONDS}")));
                }
                let algorithms = j
                    .algorithms
                    .iter()
                    .map(|a| {
                        parse_alg(a)
                            .ok_or_else(|| invalid(format!("jwt.algorithms: {a:?} is not one of RS256, RS384, RS512, ES256, ES384, EdDSA")))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                if algorithms.is_empty() {
                    return Err(invalid("jwt.algorithms is empty".into()));
                }
                let jwks_path = base.join(&j.jwks);
                let jwks_text =
                    std::fs::read_to_string(&jwks_path).map_err(|source| AuthError::Read { path: jwks_path.clone(), source })?;
                let keys: JwkSet = serde_json::from_str(&jwks_text).map_err(|e| invalid(format!("{jwks_path:?}: {e}")))?;
                if keys.keys.is_empty() {
                    return Err(invalid(format!("{jwks_path:?} has no keys")));
                }
                for k in &keys.keys {
                    DecodingKey::from_jwk(k).map_err(|e| invalid(format!("{jwks_path:?}: unusable key: {e}")))?;
                }
                let mut validation = Validation::new(algorithms[0]);
                validation.algorithms = algorithms;
                validation.set_issuer(&[&j.issuer]);
                validation.set_audience(&[&j.audience]);
                validation.leeway = j.leeway_seconds;
                validation.validate_nbf = true;
                validation.validate_exp = true;
                validation.required_spec_claims = ["exp", "iss", "aud"].iter().map(|s| s.to_string()).collect();
                Some(Jwt { jwks_path, keys, validation, principal_claim: j.principal_claim, roles_claim: j.roles_claim, issuer: j.issuer })
            }
        };
        Ok(AuthConfig {
            source: path.into(),
            sha256: crate::digest::sha256_hex(text.as_bytes()),
            roles: file.roles.clone(),
            profile_names: BTreeMap::new(),
            tokens,
            jwt,
        })
    }

    /// The profile each role names, resolved against the auth file's directory.
    pub fn role_profiles(&self) -> BTreeMap<String, String> {
        let base = self.source.parent().unwrap_or(Path::new("."));
        self.roles
            .iter()
            .map(|r| {
                let is_path = r.profile.contains('/') || r.profile.ends_with(".toml");
                let profile = if is_path { base.join(&r.profile).display().to_string() } else { r.profile.clone() };
                (r.name.clone(), profile)
            })
            .collect()
    }

    /// Records which loaded profile each role's reference resolved to.
    pub fn set_profile_names(&mut self, names: BTreeMap<String, String>) {
        self.profile_names = names;
    }

    /// Files a reload reads again: this file, the JWKS and the profile files roles name.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut out = vec![self.source.clone()];
        out.extend(self.jwt.iter().map(|j| j.jwks_path.clone()));
        out.extend(self.role_profiles().into_values().filter(|p| p.contains('/') || p.ends_with(".toml")).map(PathBuf::from));
        out
    }

    /// Issuers of accepted JWTs (for the protected-resource metadata).
    pub fn issuers(&self) -> Vec<String> {
        self.jwt.iter().map(|j| j.issuer.clone()).collect()
    }

    fn role_decision(&self, principal: String, method: Method, held: &[String]) -> Decision {
        match self.roles.iter().find(|r| held.contains(&r.name) && self.profile_names.contains_key(&r.name)) {
            Some(r) => Decision::Allow { principal, method, role: r.name.clone(), profile: self.profile_names[&r.name].clone() },
            None => Decision::Forbidden {
                principal,
                method,
                reason: format!("no configured role among {:?}", crate::audit::bound::bound_list(held, 8, 64)),
            },
        }
    }

    /// Decides on one request's `Authorization` header.
    pub fn authenticate(&self, authorization: Option<&str>) -> Decision {
        let unauth = |reason: &str| Decision::Unauthenticated { reason: reason.to_string() };
        let Some(header) = authorization else { return unauth("no Authorization header") };
        let Some(token) = header.strip_prefix("Bearer ").map(str::trim) else {
            return unauth("the Authorization header is not a Bearer token");
        };
        if token.is_empty() {
            return unauth("empty bearer token");
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // Compared in constant time with every configured digest, none skipped, so the time
        // taken says nothing about how close a guess came nor which entry matched.
        let mut found = None;
        for t in &self.tokens {
            if bool::from(t.digest[..].ct_eq(&digest[..])) {
                found = Some(t);
            }
        }
        if let Some(t) = found {
            return self.role_decision(t.principal.clone(), Method::Bearer, &t.roles);
        }
        let Some(jwt) = &self.jwt else { return unauth("unknown bearer token") };
        if token.split('.').count() != 3 {
            return unauth("unknown bearer token");
        }
        match self.verify_jwt(jwt, token) {
            Ok((principal, roles)) => self.role_decision(principal, Method::Jwt, &roles),
            Err(reason) => unauth(&format!("invalid JWT: {reason}")),
        }
    }

    fn verify_jwt(&self, jwt: &Jwt, token: &str) -> Result<(String, Vec<String>), String> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| e.to_string())?;
        if !jwt.validation.algorithms.contains(&header.alg) {
            return Err(format!("algorithm {:?} is not accepted", header.alg));
        }
        let jwk = match &header.kid {
            Some(kid) => jwt.keys.find(kid).ok_or_else(|| format!("unknown key id {:?}", crate::audit::bound::bound_str(kid, 64)))?,
            None if jwt.keys.keys.len() == 1 => &jwt.keys.keys[0],
            None => return Err("the token has no key id and the JWKS has several keys".into()),
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
        // jsonwebtoken requires every listed algorithm to fit the key's family: validate with
        // exactly the (already allowed) algorithm the token names.
        let mut validation = jwt.validation.clone();
        validation.algorithms = vec![header.alg];
        let data =
            jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(token, &key, &validation).map_err(|e| e.to_string())?;
        let claims = data.claims;
        let principal = claims
            .get(&jwt.principal_claim)
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| format!("no {:?} claim", jwt.principal_claim))?;
        if principal.len() > MAX_PRINCIPAL_BYTES {
            return Err(format!("the {:?} claim is longer than {MAX_PRINCIPAL_BYTES} bytes", jwt.principal_claim));
        }
        let roles = match claims.get(&jwt.roles_claim) {
            Some(serde_json::Value::Array(a)) => a.iter().filter_map(|v| v.as_str().map(String::from)).collect(),
            Some(serde_json::Value::String(s)) => s.split_whitespace().map(String::from).collect(),
            _ => Vec::new(),
        };
        // Subjects are namespaced by issuer so a JWT can never impersonate a static-token name.
        Ok((format!("{}#{}", jwt.issuer, principal), roles))
    }
}
