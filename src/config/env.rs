//! `${NAME}` in configuration text, replaced by the environment variable's value before parsing.

use super::ConfigError;

/// Replaces each `${NAME}` with the variable's value; an unset variable is an error naming it.
pub fn substitute(text: &str, origin: &str) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(after.len());
        if end == 0 || !after[end..].starts_with('}') {
            let line = text[..text.len() - rest.len() + start].matches('\n').count() + 1;
            return Err(ConfigError::Invalid {
                origin: origin.into(),
                message: format!("line {line}: unterminated or malformed ${{...}}: write ${{NAME}} with letters, digits and _"),
            });
        }
        let name = &after[..end];
        let value = std::env::var(name).map_err(|_| ConfigError::UnsetVariable { origin: origin.into(), name: name.into() })?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}
