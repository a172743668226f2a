//! Postgres identifiers as users write them in `table` and `columns`.

/// Parse one identifier: unquoted ones fold to lower case and must look like a
/// Postgres name; quoted ones keep their case, with `""` standing for `"`.
pub fn parse_identifier(raw: &str) -> Result<String, String> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Err("Invalid zero-length delimited identifier".into());
    }
    if let Some(inner) = raw.strip_prefix('"') {
        let Some(inner) = inner.strip_suffix('"') else {
            return Err(format!("Invalid identifier {raw}: unterminated quote"));
        };
        if inner.is_empty() {
            return Err("Invalid zero-length delimited identifier".into());
        }
        let mut out = String::with_capacity(inner.len());
        let mut chars = inner.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    out.push('"');
                } else {
                    return Err(format!("Invalid identifier {raw}: unescaped quote"));
                }
            } else {
                out.push(c);
            }
        }
        return check_len(out);
    }
    let mut chars = raw.chars();
    let valid_start = chars.next().is_some_and(|c| c.is_alphabetic() || c == '_');
    let valid_rest = chars.all(|c| c.is_alphanumeric() || c == '_' || c == '$');
    if !valid_start || !valid_rest {
        return Err(format!(
            "Invalid unquoted identifier contains special characters: {raw}"
        ));
    }
    check_len(raw.to_ascii_lowercase())
}

fn check_len(ident: String) -> Result<String, String> {
    if ident.len() > 63 {
        return Err(format!("Identifier too long (max 63 bytes): {ident}"));
    }
    Ok(ident)
}

/// Split on `sep` outside double quotes.
pub fn split_unquoted(input: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut in_quotes = false;
    let mut start = 0;
    for (i, c) in input.char_indices() {
        if c == '"' {
            in_quotes = !in_quotes;
        } else if c == sep && !in_quotes {
            parts.push(&input[start..i]);
            start = i + c.len_utf8();
        }
    }
    parts.push(&input[start..]);
    parts
}

/// Parse a `table` parameter: `name` or `schema.name`, schema defaulting to `public`.
pub fn parse_table(raw: &str) -> Result<(String, String), String> {
    let parts = split_unquoted(raw.trim(), '.');
    match parts.as_slice() {
        [name] => Ok(("public".into(), parse_identifier(name)?)),
        [schema, name] => Ok((parse_identifier(schema)?, parse_identifier(name)?)),
        _ => Err(format!("Invalid table name {raw}: too many dots")),
    }
}

/// Quote an identifier for SQL.
pub fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unquoted_identifiers_fold_to_lower_case() {
        assert_eq!(parse_identifier("Items").unwrap(), "items");
    }

    #[test]
    fn quoted_identifiers_keep_case_and_unescape_quotes() {
        assert_eq!(parse_identifier("\"My\"\"Table\"").unwrap(), "My\"Table");
    }

    #[test]
    fn dots_inside_quotes_do_not_split_the_table_name() {
        assert_eq!(
            parse_table("\"a.b\".\"C\"").unwrap(),
            ("a.b".to_string(), "C".to_string())
        );
        assert_eq!(
            parse_table("items").unwrap(),
            ("public".to_string(), "items".to_string())
        );
    }

    #[test]
    fn malformed_identifiers_are_rejected() {
        assert!(parse_identifier("").is_err());
        assert!(parse_identifier("1abc").is_err());
        assert!(parse_identifier("a-b").is_err());
        assert!(parse_table("a.b.c").is_err());
        assert!(parse_identifier(&"x".repeat(64)).is_err());
    }
}
