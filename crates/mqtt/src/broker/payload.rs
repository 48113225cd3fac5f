//! How a stored message becomes an MQTT payload and back (docs/protocol-mapping.md, "MQTT"):
//! a PUBLISH is stored as one field `payload` holding its bytes exactly; a message with only
//! that field is delivered as those bytes; any other message (an `XADD` with its own fields)
//! is delivered as a JSON object of its fields, in order — a name that repeats maps to an array
//! of its values, and a name or value that is not UTF-8 is written as `{"base64": "..."}`.

use bytes::Bytes;

/// The field a PUBLISH payload is stored in.
pub const PAYLOAD_FIELD: &[u8] = b"payload";

/// The fields a PUBLISH of `payload` is stored as.
pub fn fields_of(payload: Bytes) -> Vec<(Bytes, Bytes)> {
    vec![(Bytes::from_static(PAYLOAD_FIELD), payload)]
}

/// The MQTT payload of a stored message's fields.
pub fn payload_of(fields: &[(Bytes, Bytes)]) -> Bytes {
    if let [(name, value)] = fields
        && name.as_ref() == PAYLOAD_FIELD
    {
        return value.clone();
    }
    let mut names: Vec<&Bytes> = Vec::new();
    for (name, _) in fields {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    let mut out = String::from("{");
    for (i, name) in names.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        json_text(&mut out, name);
        out.push(':');
        let values: Vec<&Bytes> = fields
            .iter()
            .filter(|(n, _)| n == *name)
            .map(|(_, v)| v)
            .collect();
        if let [one] = values[..] {
            json_text(&mut out, one);
        } else {
            out.push('[');
            for (j, v) in values.iter().enumerate() {
                if j > 0 {
                    out.push(',');
                }
                json_text(&mut out, v);
            }
            out.push(']');
        }
    }
    out.push('}');
    Bytes::from(out)
}

/// A JSON string of UTF-8 bytes, or `{"base64":"..."}` of any others.
fn json_text(out: &mut String, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(s) => json_string(out, s),
        Err(_) => {
            out.push_str("{\"base64\":\"");
            base64(out, bytes);
            out.push_str("\"}");
        }
    }
}

fn json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Standard base64 with padding (RFC 4648).
fn base64(out: &mut String, bytes: &[u8]) {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(p: &[(&str, &[u8])]) -> Vec<(Bytes, Bytes)> {
        p.iter()
            .map(|(k, v)| {
                (
                    Bytes::copy_from_slice(k.as_bytes()),
                    Bytes::copy_from_slice(v),
                )
            })
            .collect()
    }

    #[test]
    fn a_payload_field_alone_is_the_payload_and_anything_else_is_json() {
        assert_eq!(
            payload_of(&pairs(&[("payload", b"\x00raw")])),
            &b"\x00raw"[..]
        );
        assert_eq!(
            payload_of(&pairs(&[("temp", b"21.5"), ("unit", b"C\"")])),
            &br#"{"temp":"21.5","unit":"C\""}"#[..]
        );
        assert_eq!(
            payload_of(&pairs(&[("a", b"1"), ("b", b"\xff"), ("a", b"2")])),
            &br#"{"a":["1","2"],"b":{"base64":"/w=="}}"#[..]
        );
        assert_eq!(
            payload_of(&pairs(&[("payload", b"x"), ("k", b"v")])),
            &br#"{"payload":"x","k":"v"}"#[..]
        );
    }

    #[test]
    fn base64_pads() {
        for (raw, want) in [
            (&b""[..], ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg=="),
        ] {
            let mut s = String::new();
            base64(&mut s, raw);
            assert_eq!(s, want);
        }
    }
}
