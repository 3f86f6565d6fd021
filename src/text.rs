//! Bounding caller-controlled text before it is echoed in an error, a log line or an audit
//! record, so its length is the server's choice, not the caller's.

/// `s` cut to at most `max` bytes on a character boundary, with a note of how much was cut.
pub fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…[{} more bytes]", &s[..end], s.len() - end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clips_on_a_character_boundary() {
        assert_eq!(clip("abc", 3), "abc");
        assert_eq!(clip("abcdef", 3), "abc…[3 more bytes]");
        assert_eq!(clip("ééé", 3), "é…[4 more bytes]");
    }
}
