//! Exact sums of doubles and of products of doubles.
//!
//! Every finite IEEE 754 binary64 value is `±m · 2^e` with an integer
//! mantissa `m < 2^53` and `−1074 ≤ e ≤ 971`, so a product of two is `±(m₁·m₂)
//! · 2^(e₁+e₂)` with `m₁·m₂ < 2^106`, and any sum of such terms is an integer
//! multiple of `2^−2148`: a fixed-point number. [`ExactSum`] keeps that number
//! in 64-bit limbs (a "superaccumulator", as in Kulisch's exact dot product,
//! and Neal, "Fast exact summation using small and large superaccumulators",
//! 2015), each limb an `i128` that absorbs carries lazily, so adding a term
//! costs a few integer additions. [`ExactSum::to_decimal`] prints the exact
//! value in decimal (every binary fraction is a finite decimal: `2^−k = 5^k /
//! 10^k`), for PostgreSQL's `numeric`.
//!
//! The running sums of the variance and regression families over floats are
//! such sums: exact, they can lose a row's contribution again without a
//! trace, which rounded float sums cannot.

/// Bit position of `2^0` in the accumulator: the lowest bit of a product of
/// two subnormals is `2^−2148`.
const BIAS: i32 = 2176;
/// 64-bit limbs: from `2^−2176` up to `2^2432`, above the largest product
/// (`< 2^2048`) times a weight (`< 2^64`) times any number of terms.
const LIMBS: usize = 72;
/// Terms between carry propagations (each limb takes at most `2^64` per term
/// in absolute value, and holds `2^127`).
const LAZY_TERMS: u64 = 1 << 40;

/// An exact sum of terms `w · x` and `w · x · y` (module doc). NaN and the
/// infinities are tracked apart, as PostgreSQL's float arithmetic treats
/// them: any NaN, `∞ − ∞` or `∞ · 0` makes the sum NaN.
#[derive(Debug, Clone)]
pub struct ExactSum {
    limbs: [i128; LIMBS],
    terms: u64,
    nan: bool,
    positive_infinity: bool,
    negative_infinity: bool,
}

impl Default for ExactSum {
    fn default() -> Self {
        ExactSum { limbs: [0; LIMBS], terms: 0, nan: false, positive_infinity: false, negative_infinity: false }
    }
}

/// `x = sign · m · 2^e` for a finite `x` (`m = 0` for zeros).
fn decompose(x: f64) -> (bool, u64, i32) {
    let bits = x.to_bits();
    let negative = bits >> 63 == 1;
    let biased = ((bits >> 52) & 0x7ff) as i32;
    let fraction = bits & ((1u64 << 52) - 1);
    if biased == 0 {
        (negative, fraction, -1074)
    } else {
        (negative, fraction | (1u64 << 52), biased - 1075)
    }
}

impl ExactSum {
    /// Adds `weight · x`.
    pub fn add(&mut self, x: f64, weight: i64) {
        if !x.is_finite() {
            self.add_non_finite(x.is_nan(), (x > 0.0) == (weight > 0), weight == 0);
            return;
        }
        let (negative, m, e) = decompose(x);
        self.add_bits(u128::from(m) * u128::from(weight.unsigned_abs()), e, negative != (weight < 0));
    }

    /// Adds `weight · x · y`.
    pub fn add_product(&mut self, x: f64, y: f64, weight: i64) {
        if !x.is_finite() || !y.is_finite() {
            let zero = x == 0.0 || y == 0.0 || weight == 0;
            let positive = ((x > 0.0) == (y > 0.0)) == (weight > 0);
            self.add_non_finite(x.is_nan() || y.is_nan(), positive, zero);
            return;
        }
        let (nx, mx, ex) = decompose(x);
        let (ny, my, ey) = decompose(y);
        let m = u128::from(mx) * u128::from(my);
        let w = u128::from(weight.unsigned_abs());
        let negative = (nx != ny) != (weight < 0);
        // m · w < 2^170: added as two parts below 2^128.
        self.add_bits((m & u128::from(u64::MAX)) * w, ex + ey, negative);
        self.add_bits((m >> 64) * w, ex + ey + 64, negative);
    }

    fn add_non_finite(&mut self, nan: bool, positive: bool, times_zero: bool) {
        if nan || times_zero {
            self.nan = true;
        } else if positive {
            self.positive_infinity = true;
        } else {
            self.negative_infinity = true;
        }
    }

    /// Adds `±value · 2^exponent`.
    fn add_bits(&mut self, value: u128, exponent: i32, negative: bool) {
        if value == 0 {
            return;
        }
        let position = (exponent + BIAS) as usize;
        let (index, shift) = (position / 64, (position % 64) as u32);
        let (low, high) = (value as u64, (value >> 64) as u64);
        let chunks = if shift == 0 {
            [low, high, 0]
        } else {
            [low << shift, (high << shift) | (low >> (64 - shift)), high >> (64 - shift)]
        };
        for (k, chunk) in chunks.into_iter().enumerate() {
            let chunk = i128::from(chunk);
            if negative {
                self.limbs[index + k] -= chunk;
            } else {
                self.limbs[index + k] += chunk;
            }
        }
        self.terms += 1;
        if self.terms >= LAZY_TERMS {
            self.carry();
        }
    }

    /// Propagates carries: every limb but the last in `[0, 2^64)`.
    fn carry(&mut self) {
        for i in 0..LIMBS - 1 {
            let carry = self.limbs[i] >> 64;
            self.limbs[i] -= carry << 64;
            self.limbs[i + 1] += carry;
        }
        self.terms = 0;
    }

    /// The exact value in decimal, as PostgreSQL's `numeric` reads it:
    /// `-12.375`, `0`, `NaN`, `Infinity`, `-Infinity`.
    pub fn to_decimal(&self) -> String {
        if self.nan || (self.positive_infinity && self.negative_infinity) {
            return "NaN".into();
        }
        if self.positive_infinity {
            return "Infinity".into();
        }
        if self.negative_infinity {
            return "-Infinity".into();
        }
        let mut sum = self.clone();
        sum.carry();
        let negative = sum.limbs[LIMBS - 1] < 0;
        if negative {
            for limb in sum.limbs.iter_mut() {
                *limb = -*limb;
            }
            sum.carry();
        }
        // The magnitude, in u64 limbs (the top limb is now small and non-negative).
        let mut magnitude: Vec<u64> = sum.limbs.iter().map(|l| *l as u64).collect();
        let Some(lowest) = magnitude.iter().position(|l| *l != 0) else { return "0".into() };
        // value = magnitude · 2^−BIAS = (magnitude >> t) · 2^(t − BIAS).
        let t = lowest as i32 * 64 + magnitude[lowest].trailing_zeros() as i32;
        shift_right(&mut magnitude, t as u32);
        let exponent = t - BIAS;
        let digits = if exponent >= 0 {
            shift_left(&mut magnitude, exponent as u32);
            to_decimal_digits(magnitude)
        } else {
            // m · 2^−k = m · 5^k / 10^k
            let k = (-exponent) as u32;
            let mut left = k;
            while left > 0 {
                let step = left.min(27);
                multiply_small(&mut magnitude, 5u64.pow(step));
                left -= step;
            }
            let digits = to_decimal_digits(magnitude);
            let k = k as usize;
            if digits.len() > k {
                format!("{}.{}", &digits[..digits.len() - k], &digits[digits.len() - k..])
            } else {
                format!("0.{}{digits}", "0".repeat(k - digits.len()))
            }
        };
        if negative {
            format!("-{digits}")
        } else {
            digits
        }
    }
}

fn shift_right(n: &mut Vec<u64>, bits: u32) {
    let (words, bits) = ((bits / 64) as usize, bits % 64);
    n.drain(..words.min(n.len()));
    if bits > 0 {
        for i in 0..n.len() {
            let next = n.get(i + 1).copied().unwrap_or(0);
            n[i] = (n[i] >> bits) | (next << (64 - bits));
        }
    }
}

fn shift_left(n: &mut Vec<u64>, bits: u32) {
    let (words, bits) = ((bits / 64) as usize, bits % 64);
    n.push(0);
    if bits > 0 {
        for i in (0..n.len()).rev() {
            let below = if i == 0 { 0 } else { n[i - 1] };
            n[i] = (n[i] << bits) | (below >> (64 - bits));
        }
    }
    n.splice(0..0, std::iter::repeat_n(0, words));
}

fn multiply_small(n: &mut Vec<u64>, factor: u64) {
    let mut carry = 0u128;
    for limb in n.iter_mut() {
        let product = u128::from(*limb) * u128::from(factor) + carry;
        *limb = product as u64;
        carry = product >> 64;
    }
    if carry > 0 {
        n.push(carry as u64);
    }
}

/// The decimal digits of `n` (no leading zeros; `0` for zero).
fn to_decimal_digits(mut n: Vec<u64>) -> String {
    const CHUNK: u64 = 10_000_000_000_000_000_000; // 10^19
    let mut chunks: Vec<u64> = Vec::new();
    while n.last() == Some(&0) {
        n.pop();
    }
    while !n.is_empty() {
        let mut remainder = 0u128;
        for limb in n.iter_mut().rev() {
            let current = (remainder << 64) | u128::from(*limb);
            *limb = (current / u128::from(CHUNK)) as u64;
            remainder = current % u128::from(CHUNK);
        }
        chunks.push(remainder as u64);
        while n.last() == Some(&0) {
            n.pop();
        }
    }
    let mut out = chunks.pop().map(|c| c.to_string()).unwrap_or_else(|| "0".into());
    for c in chunks.iter().rev() {
        out.push_str(&format!("{c:019}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::ExactSum;

    fn sum(terms: &[(f64, i64)]) -> String {
        let mut s = ExactSum::default();
        for (x, w) in terms {
            s.add(*x, *w);
        }
        s.to_decimal()
    }

    #[test]
    fn doubles_sum_exactly() {
        assert_eq!(sum(&[(0.1, 1)]), "0.1000000000000000055511151231257827021181583404541015625");
        assert_eq!(sum(&[(-2.5, 1)]), "-2.5");
        assert_eq!(sum(&[(1e22, 1)]), "10000000000000000000000");
        assert_eq!(sum(&[]), "0");
        assert_eq!(sum(&[(0.1, 1), (0.1, -1)]), "0");
        assert_eq!(sum(&[(1e300, 1), (1e-300, 1), (1e300, -1)]), sum(&[(1e-300, 1)]));
        assert_eq!(sum(&[(123456789.125, 3), (0.5, -1)]), "370370366.875");
        assert_eq!(sum(&[(f64::NAN, 1)]), "NaN");
        assert_eq!(sum(&[(f64::INFINITY, 1), (1.0, 1)]), "Infinity");
        assert_eq!(sum(&[(f64::INFINITY, -1)]), "-Infinity");
        assert_eq!(sum(&[(f64::INFINITY, 1), (f64::NEG_INFINITY, 1)]), "NaN");
        // The smallest subnormal: 2^-1074, 1074 fractional digits.
        let tiny = sum(&[(f64::from_bits(1), 1)]);
        assert!(tiny.starts_with("0.000") && tiny.ends_with("625") && tiny.len() == 1076, "{}", tiny.len());
        assert_eq!(sum(&[(f64::MAX, 1)]).len(), 309);
    }

    #[test]
    fn products_are_exact() {
        let mut s = ExactSum::default();
        s.add_product(0.1, 0.1, 1);
        // 0.1 is 3602879701896397 / 2^55: its square, exactly (Python's
        // Decimal(0.1) * Decimal(0.1)).
        assert_eq!(
            s.to_decimal(),
            "0.01000000000000000111022302462515657123851077828659396139564708135883709660962637144621112383902072906494140625"
        );
        s.add_product(0.1, 0.1, -1);
        assert_eq!(s.to_decimal(), "0");
        let mut big = ExactSum::default();
        big.add_product(f64::MAX, f64::MAX, i64::MAX);
        big.add_product(f64::MAX, f64::MAX, -i64::MAX);
        big.add_product(f64::from_bits(1), f64::from_bits(1), 1);
        assert!(big.to_decimal().ends_with("5") && big.to_decimal().len() == 2150, "{}", big.to_decimal().len());
        let mut z = ExactSum::default();
        z.add_product(f64::INFINITY, 0.0, 1);
        assert_eq!(z.to_decimal(), "NaN");
    }

    #[test]
    fn the_sum_reads_back_as_the_rounded_double_sum_when_exact() {
        for x in [1.0 / 3.0, 987654321.123_456_8, -1e-300, 6.02214076e23, f64::EPSILON, f64::MIN_POSITIVE] {
            let text = sum(&[(x, 1)]);
            assert_eq!(text.parse::<f64>().unwrap(), x, "{text}");
        }
    }

    proptest::proptest! {
        /// Inserting and deleting terms in any order leaves exactly the sum
        /// of the remaining ones (integers times powers of two, where f64
        /// arithmetic in i128 is exact for the check).
        #[test]
        fn adding_and_removing_terms_is_exact(
            terms in proptest::collection::vec((-1_000_000i64..1_000_000, -40i32..40, -3i64..4), 1..30),
            gone in proptest::collection::vec(0usize..30, 0..10),
        ) {
            let value = |m: i64, e: i32| m as f64 * 2f64.powi(e);
            let mut s = ExactSum::default();
            for (m, e, w) in &terms {
                s.add(value(*m, *e), *w);
                s.add_product(value(*m, *e), 0.5, *w);
            }
            let mut kept: Vec<bool> = vec![true; terms.len()];
            for g in gone {
                if g < terms.len() && kept[g] {
                    kept[g] = false;
                    let (m, e, w) = terms[g];
                    s.add(value(m, e), -w);
                    s.add_product(value(m, e), 0.5, -w);
                }
            }
            // Expected in units of 2^-41: Σ 1.5 · w · m · 2^e.
            let mut units: i128 = 0;
            for ((m, e, w), k) in terms.iter().zip(&kept) {
                if *k {
                    units += 3 * i128::from(*w) * i128::from(*m) * (1i128 << (e + 40));
                }
            }
            // units · 2^-41 = units · 5^41 / 10^41, by the integer helpers.
            let mut magnitude = vec![units.unsigned_abs() as u64, (units.unsigned_abs() >> 64) as u64];
            super::multiply_small(&mut magnitude, 5u64.pow(27));
            super::multiply_small(&mut magnitude, 5u64.pow(14));
            let digits = format!("{:0>42}", super::to_decimal_digits(magnitude));
            let (whole, fraction) = digits.split_at(digits.len() - 41);
            let whole = whole.trim_start_matches('0');
            let fraction = fraction.trim_end_matches('0');
            let mut expected = format!("{}{}", if whole.is_empty() { "0" } else { whole }, if fraction.is_empty() { String::new() } else { format!(".{fraction}") });
            if units < 0 {
                expected = format!("-{expected}");
            }
            proptest::prop_assert_eq!(s.to_decimal(), expected);
        }
    }
}
