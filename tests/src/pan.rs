//! Finding card numbers in what pgwarden wrote or sent: runs of 13 to 19 digits that pass the
//! Luhn check, the shape the masking and the journal's scrubbing must leave none of.

/// Whether `digits` (ASCII digits) pass the Luhn check.
#[must_use]
pub fn luhn_valid(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, c)| {
            let n = u32::from(c - b'0');
            match (i % 2 == 1, n * 2) {
                (true, d) if d > 9 => d - 9,
                (true, d) => d,
                (false, _) => n,
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// Every card number in `text`: a window of 13 to 19 consecutive digits that starts as the
/// payment card brands' numbers do (2 to 6: Mastercard, Amex and Diners, Visa, Mastercard,
/// Discover and UnionPay; not 1, so a millisecond timestamp is not one) and passes the Luhn
/// check. Words of 32 or more hex
/// digits are chain hashes and digests, not card numbers: about one SHA-256 in a hundred
/// holds a Luhn-valid run.
#[must_use]
pub fn card_numbers_in(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for word in text.split(|c: char| !c.is_ascii_alphanumeric()) {
        if word.len() >= 32 && word.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue;
        }
        for run in word.split(|c: char| !c.is_ascii_digit()) {
            let run = run.as_bytes();
            for len in 13..=19.min(run.len()) {
                for w in run.windows(len) {
                    if (b'2'..=b'6').contains(&w[0]) && luhn_valid(w) {
                        out.push(String::from_utf8_lossy(w).into_owned());
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_card_numbers_and_not_their_masked_forms() {
        assert!(luhn_valid(b"4111111111111111"));
        assert!(!luhn_valid(b"4111111111111112"));
        assert_eq!(
            card_numbers_in("id 7 card 4111111111111111."),
            ["4111111111111111"]
        );
        assert!(card_numbers_in("411111******1111 and 12345").is_empty());
        let hash = format!("{}{}", "0".repeat(40), "4111111111111111abcdefab");
        assert!(card_numbers_in(&format!("\"hash\":\"{hash}\"")).is_empty());
        assert!(card_numbers_in("0000000000000000").is_empty());
        assert!(card_numbers_in("\"time\":1796230879431").is_empty());
    }
}
