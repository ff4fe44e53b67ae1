//! Client input quoted in error messages, bounded: a status message travels in a gRPC header, and a
//! 10 KB resource name quoted twice overflows a client's metadata limit, so the client would see a
//! transport error instead of the message.

use std::fmt;

/// Characters of client input shown at most; the rest is summarised by its length.
const SHOWN: usize = 96;

/// Displays `text` as a quoted string, cut short past `SHOWN` characters.
pub struct Quoted<'a>(&'a str);

pub fn quote(text: &str) -> Quoted<'_> {
    Quoted(text)
}

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.char_indices().nth(SHOWN) {
            None => write!(f, "{:?}", self.0),
            Some((cut, _)) => write!(f, "{:?}... ({} bytes in all)", &self.0[..cut], self.0.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_input_is_quoted_whole_and_long_input_is_cut() {
        assert_eq!(quote("a/b").to_string(), "\"a/b\"");
        let long = "x".repeat(10_000);
        let shown = quote(&long).to_string();
        assert!(shown.len() < 200, "{shown}");
        assert!(shown.ends_with("(10000 bytes in all)"));
        let multibyte = "é".repeat(200);
        assert!(quote(&multibyte).to_string().contains("400 bytes"));
    }
}
