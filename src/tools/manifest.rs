//! `tool.toml`: what a tool package says about itself. Parsed strictly; a package only *asks*
//! for capabilities here, the operator's profile decides what it gets.

use serde::{Deserialize, Serialize};

use crate::policy::{MountMode, valid_tool_name};

/// Names the server's own tools use; a package may not take them.
pub const RESERVED_NAMES: &[&str] = &["execute_code", "create_session", "close_session"];

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: String,
    pub version: String,
    pub description: String,
    /// Hex sha256 of `tool.wasm`.
    pub wasm_sha256: String,
    /// JSON Schema (a JSON document) of the arguments; its root must be an object.
    pub input_schema: String,
    /// JSON Schema of the result, if the tool declares one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_schema: Option<String>,
    #[serde(default)]
    pub annotations: Annotations,
    #[serde(default)]
    pub capabilities: Capabilities,
}

/// MCP tool annotations. Left out, they take MCP's cautious defaults.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Annotations {
    #[serde(default)]
    pub read_only: bool,
    #[serde(default = "yes")]
    pub destructive: bool,
    #[serde(default)]
    pub idempotent: bool,
    #[serde(default = "yes")]
    pub open_world: bool,
}

fn yes() -> bool {
    true
}

impl Default for Annotations {
    fn default() -> Self {
        Annotations { read_only: false, destructive: true, idempotent: false, open_world: true }
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    /// Environment variables the tool wants (values come from the profile).
    #[serde(default)]
    pub env: Vec<String>,
    /// Mounts the tool wants, by guest path; the profile must grant each at least this mode.
    #[serde(default)]
    pub mounts: Vec<MountAsk>,
    /// At most what the tool needs; the effective limit is the lower of this and the profile's.
    #[serde(default)]
    pub limits: LimitAsk,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MountAsk {
    pub guest: String,
    pub mode: MountMode,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LimitAsk {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel: Option<u64>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error("tool.toml does not parse: {0}")]
    Parse(String),
    #[error("tool.toml: {field}: {message}")]
    Invalid { field: &'static str, message: String },
}

/// The two schemas, parsed and compiled.
pub struct Schemas {
    pub input: serde_json::Value,
    pub output: Option<serde_json::Value>,
}

impl Manifest {
    pub fn parse(text: &str) -> Result<Manifest, ManifestError> {
        let m: Manifest = toml::from_str(text).map_err(|e| ManifestError::Parse(e.to_string()))?;
        m.validate()?;
        Ok(m)
    }

    fn validate(&self) -> Result<(), ManifestError> {
        let bad = |field, message: &str| ManifestError::Invalid { field, message: message.to_string() };
        if !valid_tool_name(&self.name) {
            return Err(bad("name", "must match ^[a-zA-Z0-9_-]{1,64}$"));
        }
        if RESERVED_NAMES.contains(&self.name.as_str()) {
            return Err(bad("name", "is one of warden's own tool names"));
        }
        if self.version.is_empty() || self.version.len() > 64 {
            return Err(bad("version", "must be 1-64 characters"));
        }
        if self.description.trim().is_empty() || self.description.len() > 4096 {
            return Err(bad("description", "must be 1-4096 characters"));
        }
        if self.wasm_sha256.len() != 64 || !self.wasm_sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad("wasm_sha256", "must be 64 hex digits"));
        }
        self.schemas()?;
        for name in &self.capabilities.env {
            let ok = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !ok {
                return Err(ManifestError::Invalid { field: "capabilities.env", message: format!("{name:?} is not a variable name") });
            }
        }
        for m in &self.capabilities.mounts {
            if !m.guest.starts_with('/') || m.guest.contains("..") {
                return Err(ManifestError::Invalid {
                    field: "capabilities.mounts",
                    message: format!("{:?} is not an absolute guest path", m.guest),
                });
            }
        }
        let l = &self.capabilities.limits;
        if l.timeout_ms == Some(0) || l.memory_mb == Some(0) || l.fuel == Some(0) {
            return Err(bad("capabilities.limits", "limits must be at least 1"));
        }
        Ok(())
    }

    /// Parses and checks both schemas: valid JSON Schema, input rooted at an object.
    pub fn schemas(&self) -> Result<Schemas, ManifestError> {
        let parse = |field: &'static str, text: &str| -> Result<serde_json::Value, ManifestError> {
            let v: serde_json::Value =
                serde_json::from_str(text).map_err(|e| ManifestError::Invalid { field, message: format!("not JSON: {e}") })?;
            jsonschema::validator_for(&v)
                .map_err(|e| ManifestError::Invalid { field, message: format!("not a valid JSON Schema: {e}") })?;
            Ok(v)
        };
        let input = parse("input_schema", &self.input_schema)?;
        if input.get("type").and_then(|t| t.as_str()) != Some("object") {
            return Err(ManifestError::Invalid { field: "input_schema", message: "its root must be {\"type\": \"object\"}".into() });
        }
        let output = self.output_schema.as_deref().map(|t| parse("output_schema", t)).transpose()?;
        Ok(Schemas { input, output })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> String {
        format!(
            "name = \"t\"\nversion = \"1\"\ndescription = \"d\"\nwasm_sha256 = \"{}\"\ninput_schema = '''{{\"type\": \"object\"}}'''\n",
            "a".repeat(64)
        )
    }

    #[test]
    fn a_minimal_manifest_parses_with_cautious_annotations() {
        let m = Manifest::parse(&sample()).unwrap();
        assert_eq!(m.annotations, Annotations::default());
        assert!(m.annotations.destructive && m.annotations.open_world);
    }

    #[test]
    fn bad_manifests_say_which_field() {
        let cases = [
            (sample().replace("name = \"t\"", "name = \"bad name!\""), "name"),
            (sample().replace("name = \"t\"", "name = \"execute_code\""), "name"),
            (sample().replace(&"a".repeat(64), "abc"), "wasm_sha256"),
            (sample().replace("{\"type\": \"object\"}", "{\"type\": \"string\"}"), "input_schema"),
            (sample().replace("{\"type\": \"object\"}", "{\"type\": 12}"), "input_schema"),
            (sample().replace("{\"type\": \"object\"}", "not json"), "input_schema"),
        ];
        for (text, field) in cases {
            match Manifest::parse(&text) {
                Err(ManifestError::Invalid { field: f, .. }) => assert_eq!(f, field, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
        assert!(matches!(Manifest::parse(&(sample() + "surprise = 1\n")), Err(ManifestError::Parse(_))));
    }
}
