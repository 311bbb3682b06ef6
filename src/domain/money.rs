//! Money as integer minor units of a currency, and the amounts people type.
//!
//! Stripe counts in the smallest unit of each currency: cents for USD, yen for JPY (a
//! zero-decimal currency), fils for KWD (a three-decimal currency whose last digit must be 0).
//! A typed amount (`25.50`, `$1,234.56`, `¥1200`) is parsed without a currency first, because
//! the currency is only known once Stripe has told us about the charge.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Stripe's zero-decimal currencies (stripe.com/docs/currencies).
const ZERO_DECIMAL: [&str; 16] =
    ["bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd", "vuv", "xaf", "xof", "xpf"];
/// Stripe's three-decimal currencies; amounts must end in 0.
const THREE_DECIMAL: [&str; 5] = ["bhd", "jod", "kwd", "omr", "tnd"];
/// ISK is two-decimal in Stripe's API, but since 2023-04-14 amounts must be whole krónur
/// (divisible by 100); refunds of older fractional charges must be rounded down.
const WHOLE_UNITS_ONLY: [&str; 1] = ["isk"];
/// Stripe accepts at most 8 digits of minor units (12 for IDR).
const MAX_MINOR: u64 = 99_999_999;
const MAX_MINOR_IDR: u64 = 999_999_999_999;

/// Currency symbols people type, and the currencies each may stand for.
const SYMBOLS: [(&str, &[&str]); 7] = [
    ("US$", &["usd"]),
    ("$", &["usd", "cad", "aud", "nzd", "hkd", "sgd", "mxn", "twd", "clp", "cop", "ars"]),
    ("€", &["eur"]),
    ("£", &["gbp"]),
    ("¥", &["jpy", "cny"]),
    ("₩", &["krw"]),
    ("₹", &["inr"]),
];

/// An ISO 4217 currency code as Stripe writes it (lower case).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency([u8; 3]);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a currency code (three letters, like usd)")]
pub struct CurrencyError(String);

impl Currency {
    pub fn parse(code: &str) -> Result<Self, CurrencyError> {
        let b = code.trim().as_bytes();
        if b.len() == 3 && b.iter().all(u8::is_ascii_alphabetic) {
            Ok(Currency([b[0].to_ascii_lowercase(), b[1].to_ascii_lowercase(), b[2].to_ascii_lowercase()]))
        } else {
            Err(CurrencyError(code.to_string()))
        }
    }

    /// Lower-case code, as Stripe sends it.
    pub fn code(&self) -> &str {
        // Only ASCII letters are ever stored.
        std::str::from_utf8(&self.0).unwrap_or("???")
    }

    /// Number of decimal places of the minor unit, as Stripe counts them.
    pub fn exponent(&self) -> u32 {
        let c = self.code();
        if ZERO_DECIMAL.contains(&c) {
            0
        } else if THREE_DECIMAL.contains(&c) {
            3
        } else {
            2
        }
    }

    /// The smallest refundable increment in minor units: 10 for three-decimal currencies (last
    /// digit 0), 100 for ISK (whole krónur), else 1. HUF and TWD are zero-decimal only for
    /// payouts; charges and refunds take two decimals, so they need nothing special here.
    pub fn minor_step(&self) -> u64 {
        let c = self.code();
        if WHOLE_UNITS_ONLY.contains(&c) {
            100
        } else if THREE_DECIMAL.contains(&c) {
            10
        } else {
            1
        }
    }

    /// The most of `minor` that Stripe will accept as a refund: rounded down to the step.
    pub fn refundable_part(&self, minor: u64) -> u64 {
        minor - minor % self.minor_step()
    }

    fn max_minor(&self) -> u64 {
        if self.code() == "idr" { MAX_MINOR_IDR } else { MAX_MINOR }
    }

    /// The symbol to show, when it names this currency without doubt.
    fn display_symbol(&self) -> Option<&'static str> {
        match self.code() {
            "usd" => Some("$"),
            "eur" => Some("€"),
            "gbp" => Some("£"),
            "jpy" => Some("¥"),
            "krw" => Some("₩"),
            "inr" => Some("₹"),
            _ => None,
        }
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.code().to_ascii_uppercase())
    }
}
impl TryFrom<String> for Currency {
    type Error = CurrencyError;
    fn try_from(s: String) -> Result<Self, CurrencyError> {
        Currency::parse(&s)
    }
}
impl From<Currency> for String {
    fn from(c: Currency) -> String {
        c.code().to_string()
    }
}

/// An amount of money: integer minor units and their currency. Never a float.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Money {
    minor: u64,
    currency: Currency,
}

impl Money {
    pub fn new(minor: u64, currency: Currency) -> Self {
        Money { minor, currency }
    }
    pub fn minor(&self) -> u64 {
        self.minor
    }
    pub fn currency(&self) -> Currency {
        self.currency
    }
    pub fn is_zero(&self) -> bool {
        self.minor == 0
    }
    /// `self - other`, or `None` when the currencies differ or the result would be negative.
    pub fn checked_sub(&self, other: &Money) -> Option<Money> {
        (self.currency == other.currency)
            .then(|| self.minor.checked_sub(other.minor))
            .flatten()
            .map(|minor| Money::new(minor, self.currency))
    }

    /// The number alone, with thousands separators: `1,234.50`, `1,200` (JPY), `1.250` (KWD).
    pub fn format_number(&self) -> String {
        let step = self.currency.minor_step();
        // Whole-unit currencies (ISK) show no decimals unless the amount has some.
        let exp = if step == 100 && self.minor % 100 == 0 { 0 } else { self.currency.exponent() };
        let minor = if exp == 0 && step == 100 { self.minor / 100 } else { self.minor };
        let scale = 10u64.pow(exp);
        let whole = group_thousands(minor / scale);
        if exp == 0 { whole } else { format!("{whole}.{:0width$}", minor % scale, width = exp as usize) }
    }
}

impl fmt::Display for Money {
    /// `$25.00`, `¥1,200`, `1.250 KWD`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.currency.display_symbol() {
            Some(sym) => write!(f, "{sym}{}", self.format_number()),
            None => write!(f, "{} {}", self.format_number(), self.currency),
        }
    }
}

fn group_thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// Why a typed amount cannot be refunded. Every message says what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error("`{0}` is not an amount. Write it like `25`, `25.50`, `$1,234.56` or `full`.")]
    Garbage(String),
    #[error("the amount must be more than zero. Write it like `25.50`, or `full` for everything left.")]
    Zero,
    #[error("the amount cannot be negative: `{0}`. Write the amount to give back, like `25.50`.")]
    Negative(String),
    #[error("`{0}` has its thousands separators in the wrong place. Write it like `1,234.56` or `1234.56`.")]
    BadGrouping(String),
    #[error("`{text}` has too many decimals for {currency}, which has {places}. Write it like `{example}`.")]
    TooManyDecimals { text: String, currency: Currency, places: u32, example: String },
    #[error(
        "{currency} refunds go in steps of {step} (Stripe's rule), so `{text}` cannot be refunded. Write it like `{example}`."
    )]
    NotInSteps { text: String, currency: Currency, step: String, example: String },
    #[error(
        "`{text}` is in `{symbol}`, but the charge is in {currency}. Write the amount in {currency}, like `{example}`."
    )]
    WrongCurrency { text: String, symbol: String, currency: Currency, example: String },
    #[error("`{text}` is more than Stripe can refund in one go ({max}).")]
    TooLarge { text: String, max: Money },
}

/// An amount as a person typed it, before its currency is known.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AmountInput {
    /// What was typed, for messages.
    text: String,
    /// The integer part's digits, without separators or leading zeros.
    whole: String,
    /// The digits after the decimal point, as typed.
    fraction: String,
    symbol: Option<String>,
}

impl AmountInput {
    /// Reads `25`, `25.5`, `25.50`, `$25.50`, `1,234.56`, `¥1200`. Refuses zero, negatives,
    /// misplaced separators and anything else.
    pub fn parse(text: &str) -> Result<Self, AmountError> {
        let t = text.trim();
        let garbage = || AmountError::Garbage(t.to_string());
        if t.starts_with('-') || t.starts_with('−') {
            return Err(AmountError::Negative(t.to_string()));
        }
        let (symbol, rest) = match SYMBOLS.iter().find(|(s, _)| t.starts_with(s)) {
            Some((s, _)) => (Some(s.to_string()), &t[s.len()..]),
            None => (None, t),
        };
        if rest.starts_with('-') {
            return Err(AmountError::Negative(t.to_string()));
        }
        let (int_part, fraction) = match rest.split_once('.') {
            Some((i, f)) => (i, f),
            None => (rest, ""),
        };
        if int_part.is_empty() && fraction.is_empty() {
            return Err(garbage());
        }
        if !fraction.bytes().all(|b| b.is_ascii_digit()) || (rest.contains('.') && fraction.is_empty()) {
            return Err(garbage());
        }
        if !int_part.bytes().all(|b| b.is_ascii_digit() || b == b',') {
            return Err(garbage());
        }
        if int_part.contains(',') {
            let mut groups = int_part.split(',');
            let first = groups.next().unwrap_or("");
            let well_grouped = !first.is_empty() && first.len() <= 3 && groups.all(|g| g.len() == 3);
            if !well_grouped {
                return Err(AmountError::BadGrouping(t.to_string()));
            }
        }
        let digits: String = int_part.chars().filter(|c| *c != ',').collect();
        let whole = digits.trim_start_matches('0').to_string();
        // Guard the arithmetic below: no currency allows this many digits.
        if whole.len() > 15 || fraction.len() > 15 {
            return Err(garbage());
        }
        if whole.is_empty() && fraction.bytes().all(|b| b == b'0') {
            return Err(AmountError::Zero);
        }
        Ok(AmountInput { text: t.to_string(), whole, fraction: fraction.to_string(), symbol })
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// The amount in `currency`'s minor units, following Stripe's rules for that currency.
    pub fn to_money(&self, currency: Currency) -> Result<Money, AmountError> {
        let example = || example_for(currency);
        if let Some(sym) = &self.symbol {
            let allowed =
                SYMBOLS.iter().find(|(s, _)| s == sym).is_some_and(|(_, codes)| codes.contains(&currency.code()));
            if !allowed {
                return Err(AmountError::WrongCurrency {
                    text: self.text.clone(),
                    symbol: sym.clone(),
                    currency,
                    example: example(),
                });
            }
        }
        let exp = currency.exponent() as usize;
        let significant = self.fraction.trim_end_matches('0');
        if significant.len() > exp {
            return Err(AmountError::TooManyDecimals {
                text: self.text.clone(),
                currency,
                places: exp as u32,
                example: example(),
            });
        }
        let mut fraction = significant.to_string();
        while fraction.len() < exp {
            fraction.push('0');
        }
        let too_large =
            || AmountError::TooLarge { text: self.text.clone(), max: Money::new(currency.max_minor(), currency) };
        let whole: u64 = if self.whole.is_empty() { 0 } else { self.whole.parse().map_err(|_| too_large())? };
        let frac: u64 = if fraction.is_empty() { 0 } else { fraction.parse().map_err(|_| too_large())? };
        let minor = whole.checked_mul(10u64.pow(exp as u32)).and_then(|w| w.checked_add(frac)).ok_or_else(too_large)?;
        if minor > currency.max_minor() {
            return Err(too_large());
        }
        let step = currency.minor_step();
        if minor % step != 0 {
            let step = Money::new(step, currency).to_string();
            return Err(AmountError::NotInSteps { text: self.text.clone(), currency, step, example: example() });
        }
        Ok(Money::new(minor, currency))
    }
}

/// A correct amount to show in a message, in the currency's own form.
fn example_for(currency: Currency) -> String {
    match (currency.exponent(), currency.minor_step()) {
        (0, _) | (_, 100) => "1200".to_string(),
        (3, _) => "1.250".to_string(),
        _ => "25.50".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cur(c: &str) -> Currency {
        Currency::parse(c).unwrap()
    }
    fn minor(text: &str, c: &str) -> Result<u64, AmountError> {
        AmountInput::parse(text).and_then(|a| a.to_money(cur(c))).map(|m| m.minor())
    }

    #[test]
    fn amounts_in_two_decimal_currencies() {
        assert_eq!(minor("25", "usd"), Ok(2500));
        assert_eq!(minor("25.5", "usd"), Ok(2550));
        assert_eq!(minor("25.50", "usd"), Ok(2550));
        assert_eq!(minor("$25.50", "usd"), Ok(2550));
        assert_eq!(minor("1,234.56", "usd"), Ok(123456));
        assert_eq!(minor("0.01", "eur"), Ok(1));
        assert_eq!(minor(".5", "gbp"), Ok(50));
        assert_eq!(minor("25.500", "usd"), Ok(2550), "trailing zeros are not extra precision");
    }

    #[test]
    fn zero_decimal_currencies_are_not_multiplied_by_a_hundred() {
        assert_eq!(minor("¥1200", "jpy"), Ok(1200));
        assert_eq!(minor("1200", "jpy"), Ok(1200));
        assert_eq!(minor("50000", "krw"), Ok(50000));
        assert!(matches!(minor("1200.5", "jpy"), Err(AmountError::TooManyDecimals { .. })));
    }

    #[test]
    fn three_decimal_currencies_need_a_final_zero() {
        assert_eq!(minor("1.250", "kwd"), Ok(1250));
        assert_eq!(minor("1.25", "kwd"), Ok(1250));
        assert!(matches!(minor("1.255", "kwd"), Err(AmountError::NotInSteps { .. })));
        assert!(matches!(minor("1.2555", "bhd"), Err(AmountError::TooManyDecimals { .. })));
    }

    #[test]
    fn isk_is_two_decimal_at_stripe_but_only_whole_kronur() {
        assert_eq!(minor("1200", "isk"), Ok(120_000));
        assert_eq!(minor("1,200.00", "isk"), Ok(120_000));
        assert!(matches!(minor("1200.50", "isk"), Err(AmountError::NotInSteps { .. })));
        let isk = cur("isk");
        assert_eq!(Money::new(120_000, isk).to_string(), "1,200 ISK");
        assert_eq!(Money::new(120_050, isk).to_string(), "1,200.50 ISK");
        assert_eq!(isk.refundable_part(120_050), 120_000, "old fractional charges refund rounded down");
        assert_eq!(cur("kwd").refundable_part(1255), 1250);
        assert_eq!(cur("usd").refundable_part(1255), 1255);
    }

    #[test]
    fn huf_and_twd_take_two_decimals_in_refunds() {
        assert_eq!(minor("1500.50", "huf"), Ok(150_050));
        assert_eq!(minor("99.99", "twd"), Ok(9_999));
        assert_eq!(minor("500", "ugx"), Ok(500), "UGX follows Stripe's zero-decimal list");
    }

    #[test]
    fn bad_amounts_are_refused_with_the_reason() {
        assert_eq!(AmountInput::parse("0"), Err(AmountError::Zero));
        assert_eq!(AmountInput::parse("0.00"), Err(AmountError::Zero));
        assert!(matches!(AmountInput::parse("-5"), Err(AmountError::Negative(_))));
        assert!(matches!(AmountInput::parse("$-5"), Err(AmountError::Negative(_))));
        assert!(matches!(AmountInput::parse("12,34.00"), Err(AmountError::BadGrouping(_))));
        assert!(matches!(AmountInput::parse("1,2345"), Err(AmountError::BadGrouping(_))));
        for garbage in ["", "abc", "25.", "2.5.0", "25e3", "1_000", "$", ".", "12a", "9999999999999999999999"] {
            assert!(matches!(AmountInput::parse(garbage), Err(AmountError::Garbage(_))), "{garbage:?}");
        }
        assert!(matches!(minor("25.123", "usd"), Err(AmountError::TooManyDecimals { .. })));
        assert!(matches!(minor("1000000", "usd"), Err(AmountError::TooLarge { .. })));
    }

    #[test]
    fn a_symbol_must_match_the_charge_currency() {
        assert!(matches!(minor("¥1200", "usd"), Err(AmountError::WrongCurrency { .. })));
        assert!(matches!(minor("€5", "gbp"), Err(AmountError::WrongCurrency { .. })));
        assert_eq!(minor("$5", "cad"), Ok(500));
        let msg = minor("¥1200", "usd").unwrap_err().to_string();
        assert!(msg.contains("USD") && msg.contains("25.50"), "{msg}");
    }

    #[test]
    fn money_is_formatted_in_its_own_currency() {
        assert_eq!(Money::new(2550, cur("usd")).to_string(), "$25.50");
        assert_eq!(Money::new(123456, cur("usd")).to_string(), "$1,234.56");
        assert_eq!(Money::new(1200, cur("jpy")).to_string(), "¥1,200");
        assert_eq!(Money::new(1250, cur("kwd")).to_string(), "1.250 KWD");
        assert_eq!(Money::new(5, cur("cad")).to_string(), "0.05 CAD");
    }

    #[test]
    fn formatted_money_parses_back_to_the_same_amount() {
        for (m, c) in [(2550, "usd"), (1200, "jpy"), (1250, "kwd"), (99_999_999, "eur"), (1, "gbp")] {
            let money = Money::new(m, cur(c));
            assert_eq!(minor(&money.format_number(), c), Ok(m), "{money}");
        }
    }

    /// Every currency with a rule of its own, and a few ordinary ones.
    const CURRENCIES: [&str; 28] = [
        "bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd", "vuv", "xaf", "xof", "xpf",
        "bhd", "jod", "kwd", "omr", "tnd", "isk", "huf", "twd", "usd", "eur", "gbp", "idr",
    ];

    proptest::proptest! {
        #[test]
        fn formatting_then_parsing_gives_the_same_amount(index in 0..CURRENCIES.len(), raw in 1u64..=99_999_999) {
            let currency = cur(CURRENCIES[index]);
            let amount = currency.refundable_part(raw).max(currency.minor_step());
            let money = Money::new(amount, currency);
            let back = AmountInput::parse(&money.format_number()).and_then(|a| a.to_money(currency));
            proptest::prop_assert_eq!(back, Ok(money));
            if let Some(sym) = currency.display_symbol() {
                let shown = money.to_string();
                proptest::prop_assert!(shown.starts_with(sym));
                proptest::prop_assert_eq!(AmountInput::parse(&shown).and_then(|a| a.to_money(currency)), Ok(money));
            }
        }

        #[test]
        fn no_input_makes_the_parser_panic(text in "\\PC{0,40}", index in 0..CURRENCIES.len()) {
            if let Ok(input) = AmountInput::parse(&text) {
                let _ = input.to_money(cur(CURRENCIES[index]));
            }
        }

        #[test]
        fn amount_like_input_never_panics(text in "[-$€£¥₩₹US]{0,3}[0-9,.]{0,30}", index in 0..CURRENCIES.len()) {
            if let Ok(input) = AmountInput::parse(&text) {
                if let Ok(m) = input.to_money(cur(CURRENCIES[index])) {
                    proptest::prop_assert!(m.minor() > 0);
                }
            }
        }
    }
}
