//! Finding card numbers (PANs) in text and masking them in place: 13 to 19 digits, optionally
//! grouped by single spaces or dashes, Luhn-valid, in a known issuer range. The mask keeps the
//! first six and last four digits (or the last four only) and every separator, so lengths and
//! shapes survive. Scans bytes once; allocates only when it finds something.

/// How much of a PAN stays visible.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Keep {
    /// BIN (first six) and last four digits: the most PCI DSS 3.4.1 allows.
    First6Last4,
    /// Last four digits only.
    Last4,
}

/// Whether `digits` (ASCII) pass the Luhn check.
pub fn luhn(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, d) in digits.iter().rev().enumerate() {
        let mut v = u32::from(d - b'0');
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum.is_multiple_of(10)
}

fn prefix(digits: &[u8], n: usize) -> u32 {
    digits
        .iter()
        .take(n)
        .fold(0, |a, d| a * 10 + u32::from(d - b'0'))
}

/// Whether `digits` start like a card of a known issuer with that length: Visa, Mastercard
/// (51-55 and the 2-series 2221-2720), American Express, Discover, JCB, Diners, UnionPay,
/// Maestro.
pub fn issuer(digits: &[u8]) -> bool {
    let len = digits.len();
    let p1 = prefix(digits, 1);
    let p2 = prefix(digits, 2);
    let p3 = prefix(digits, 3);
    let p4 = prefix(digits, 4);
    let p6 = prefix(digits, 6);
    (p1 == 4 && matches!(len, 13 | 16 | 19))
        || ((51..=55).contains(&p2) && len == 16)
        || ((2221..=2720).contains(&p4) && len == 16)
        || ((p2 == 34 || p2 == 37) && len == 15)
        || ((p4 == 6011
            || p2 == 65
            || (644..=649).contains(&p3)
            || (622_126..=622_925).contains(&p6))
            && (16..=19).contains(&len))
        || ((3528..=3589).contains(&p4) && (16..=19).contains(&len))
        || (((300..=305).contains(&p3) || p2 == 36 || p2 == 38) && (14..=19).contains(&len))
        || (p2 == 62 && (16..=19).contains(&len))
        || ((p2 == 50 || (56..=69).contains(&p2)) && (12..=19).contains(&len))
}

/// Whether `text` holds at least 13 ASCII digits, the fewest a PAN has. Branch-free over
/// 32-byte blocks, so the compiler turns it into vector compares and adds (the common case:
/// a value without a PAN is rejected here at memory speed).
fn enough_digits(text: &[u8]) -> bool {
    let mut n = 0usize;
    let mut blocks = text.chunks_exact(32);
    for block in &mut blocks {
        n += block
            .iter()
            .map(|&b| u8::from(b.wrapping_sub(b'0') < 10))
            .sum::<u8>() as usize;
        if n >= 13 {
            return true;
        }
    }
    n += blocks
        .remainder()
        .iter()
        .filter(|b| b.is_ascii_digit())
        .count();
    n >= 13
}

/// The next PAN in `text` at or after `from`: its digits' positions in `positions[..n]`, and
/// `n`; `None` when there is none. Reads only; the callers mask.
fn next_pan(text: &[u8], mut i: usize, positions: &mut [usize; 20]) -> Option<usize> {
    let mut digits = [0u8; 19];
    while i < text.len() {
        // To the start of the next run of digits.
        i += text[i..].iter().position(u8::is_ascii_digit)?;
        // A run of digits with single separators, starting at i.
        let mut len = 0;
        let mut j = i;
        while j < text.len() && len <= 19 {
            if text[j].is_ascii_digit() {
                positions[len] = j;
                len += 1;
                j += 1;
            } else if (text[j] == b' ' || text[j] == b'-')
                && j + 1 < text.len()
                && text[j + 1].is_ascii_digit()
                && len > 0
            {
                j += 1;
            } else {
                break;
            }
        }
        let run = &positions[..len];
        // Try the longest PAN first, then shorter ones at the same start: a PAN followed by
        // more digits after a separator ("4111 1111 1111 1111 2024") is still found.
        let mut n = len.min(19);
        while n >= 13 {
            let end = run[n - 1];
            let next_is_digit_glued = run.get(n).is_some_and(|&p| p == end + 1);
            if !next_is_digit_glued {
                for (d, &p) in digits.iter_mut().zip(&run[..n]) {
                    *d = text[p];
                }
                if luhn(&digits[..n]) && issuer(&digits[..n]) {
                    return Some(n);
                }
            }
            n -= 1;
        }
        // Past the run, and past any digits glued to where it was cut (a run longer than 19
        // digits holds no PAN).
        i = run.last().map_or(i + 1, |&p| p + 1);
        while i < text.len() && text[i].is_ascii_digit() {
            i += 1;
        }
    }
    None
}

/// Masks the digits of one found PAN (`positions` of its `n` digits) in `buf`.
fn mask_at(buf: &mut [u8], positions: &[usize], keep: Keep) {
    let n = positions.len();
    let visible_head = match keep {
        Keep::First6Last4 => 6,
        Keep::Last4 => 0,
    };
    for &p in &positions[visible_head.min(n)..n.saturating_sub(4)] {
        buf[p] = b'*';
    }
}

/// Masks every PAN inside `text`; `None` when there is none (the common case, no allocation).
/// Returns the masked copy and how many PANs were masked.
pub fn mask_pans(text: &[u8], keep: Keep) -> Option<(Vec<u8>, usize)> {
    if !enough_digits(text) {
        return None;
    }
    let mut positions = [0usize; 20];
    let mut out: Option<Vec<u8>> = None;
    let mut found = 0;
    let mut i = 0;
    // Scanning the original is scanning the copy: masked digits lie behind `i`.
    while let Some(n) = next_pan(text, i, &mut positions) {
        let buf = out.get_or_insert_with(|| text.to_vec());
        mask_at(buf, &positions[..n], keep);
        found += 1;
        i = positions[n - 1] + 1;
    }
    out.map(|o| (o, found))
}

/// Where the first PAN of `text` starts, if it holds one (reads only: a caller that masks in
/// place copies the value only then, and masks from there).
pub fn first_pan(text: &[u8]) -> Option<usize> {
    if !enough_digits(text) {
        return None;
    }
    let mut positions = [0usize; 20];
    next_pan(text, 0, &mut positions).map(|_| positions[0])
}

/// [`mask_pans`] in place: the PANs of `buf` masked where they are; how many.
pub fn mask_pans_in_place(buf: &mut [u8], keep: Keep) -> usize {
    if !enough_digits(buf) {
        return 0;
    }
    mask_pans_in_place_from(buf, 0, keep)
}

/// [`mask_pans_in_place`] from `from` on (where [`first_pan`] found the first one).
pub fn mask_pans_in_place_from(buf: &mut [u8], from: usize, keep: Keep) -> usize {
    let mut positions = [0usize; 20];
    let mut found = 0;
    let mut i = from;
    while let Some(n) = next_pan(buf, i, &mut positions) {
        mask_at(buf, &positions[..n], keep);
        found += 1;
        i = positions[n - 1] + 1;
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn with_check_digit(body: &[u8]) -> Vec<u8> {
        for c in b'0'..=b'9' {
            let mut d = body.to_vec();
            d.push(c);
            if luhn(&d) {
                return d;
            }
        }
        unreachable!()
    }

    #[test]
    fn masks_known_test_cards_in_any_shape() {
        let cases: &[(&str, &str)] = &[
            ("4111111111111111", "411111******1111"),
            ("card 4111-1111-1111-1111 ok", "card 4111-11**-****-1111 ok"),
            (
                "{\"pan\": \"5500 0000 0000 0004\"}",
                "{\"pan\": \"5500 00** **** 0004\"}",
            ),
            (
                "{378282246310005,6011111111111117}",
                "{378282*****0005,601111******1117}",
            ),
            ("(1,4111111111111111,holder)", "(1,411111******1111,holder)"),
            ("2221000000000009", "222100******0009"),
            (
                "Key (card_number)=(4111111111111111) already exists.",
                "Key (card_number)=(411111******1111) already exists.",
            ),
        ];
        for (input, want) in cases {
            let (got, n) = mask_pans(input.as_bytes(), Keep::First6Last4)
                .unwrap_or_else(|| panic!("not found in {input}"));
            assert_eq!(String::from_utf8(got).unwrap(), *want);
            assert!(n >= 1);
        }
        let (got, _) = mask_pans(b"4111111111111111", Keep::Last4).unwrap();
        assert_eq!(got, b"************1111");
    }

    #[test]
    fn leaves_other_numbers_alone() {
        for s in [
            "order 1234567890123",           // not Luhn-valid / no issuer
            "+1 555 123 4567",               // phone
            "2026-11-25 05:00:35.123456+00", // timestamp
            "4111111111111112",              // Luhn-invalid
            "12345678901234567890123",       // too long a run
            "9999999999999995",              // Luhn-valid, no issuer
            "id 7, amount 10",
        ] {
            assert!(mask_pans(s.as_bytes(), Keep::First6Last4).is_none(), "{s}");
        }
    }

    /// Generated cards of every brand and length: always masked, whatever surrounds them.
    fn card() -> impl Strategy<Value = Vec<u8>> {
        let brands: Vec<(&'static str, usize)> = vec![
            ("4", 13),
            ("4", 16),
            ("4", 19),
            ("51", 16),
            ("55", 16),
            ("2221", 16),
            ("2720", 16),
            ("34", 15),
            ("37", 15),
            ("6011", 16),
            ("65", 19),
            ("644", 16),
            ("3528", 16),
            ("3589", 19),
            ("300", 14),
            ("36", 14),
            ("62", 17),
            ("50", 16),
            ("67", 18),
        ];
        proptest::sample::select(brands).prop_flat_map(|(p, len)| {
            proptest::collection::vec(0u8..10, len - 1 - p.len()).prop_map(move |rest| {
                let mut body: Vec<u8> = p.bytes().collect();
                body.extend(rest.iter().map(|d| b'0' + d));
                with_check_digit(&body)
            })
        })
    }

    proptest! {
        #[test]
        fn every_generated_pan_is_masked(pan in card(), pre in "[a-z :=(\"]{0,8}", post in "[a-z )\",]{0,8}", sep in 0usize..3) {
            let shaped: Vec<u8> = match sep {
                0 => pan.clone(),
                s => pan.chunks(4).collect::<Vec<_>>().join(if s == 1 { &b" "[..] } else { &b"-"[..] }),
            };
            let text = [pre.as_bytes(), &shaped, post.as_bytes()].concat();
            let (masked, n) = mask_pans(&text, Keep::First6Last4).expect("a PAN was missed");
            prop_assert_eq!(n, 1);
            prop_assert_eq!(masked.len(), text.len());
            let digits: Vec<u8> = masked.iter().copied().filter(u8::is_ascii_digit).collect();
            prop_assert!(digits.len() <= 10, "more than BIN and last four visible");
        }
    }

    #[test]
    fn false_positive_rate_on_non_pan_digit_strings() {
        // A deterministic corpus of things that are not card numbers.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut total = 0;
        let mut flagged = 0;
        for _ in 0..20_000 {
            let kind = next() % 4;
            let s = match kind {
                0 => format!("ORD-{:013}", next() % 10_000_000_000_000), // order numbers
                1 => format!(
                    "+{} {:03} {:03} {:04}",
                    next() % 90 + 1,
                    next() % 1000,
                    next() % 1000,
                    next() % 10_000
                ), // phones
                2 => format!(
                    "{}",
                    1_600_000_000_000_000u64 + next() % 100_000_000_000_000
                ), // epoch micros
                _ => format!("{:016}", next() % 10_000_000_000_000_000), // 16-digit ids
            };
            total += 1;
            if mask_pans(s.as_bytes(), Keep::First6Last4).is_some() {
                flagged += 1;
            }
        }
        let rate = f64::from(flagged) / f64::from(total);
        println!(
            "PAN detector false positives: {flagged} of {total} non-PAN digit strings ({:.3}%)",
            rate * 100.0
        );
        // Random 16-digit ids pass Luhn one time in ten and many fall in issuer ranges; that
        // is the price of masking every real PAN. Keep the rate known and bounded.
        assert!(rate < 0.05, "false positive rate {rate}");
    }
}
