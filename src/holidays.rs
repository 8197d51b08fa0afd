//! Holiday calendars, computed for any year: pure date arithmetic, tested against known dates.
//!
//! - `us-federal`: the eleven federal holidays (5 U.S.C. 6103), on their dates and on the
//!   weekday they are observed when they fall on a weekend (both count: fail closed);
//! - `us-al`, `us-ms`, `us-la`: federal holidays plus the state legal holidays those states'
//!   "no sales calls on legal holidays" rules add (Ala. Code 1-3-8, Miss. Code 3-3-7, La. R.S.
//!   1:55: Confederate Memorial Day, Jefferson Davis' birthday, Mardi Gras);
//! - `fr`: the eleven French public holidays (Code du travail L3133-1), with Easter Monday,
//!   Ascension and Whit Monday moving with Easter.

use jiff::civil::{Date, Weekday, date};

/// The calendars consentry knows.
pub const CALENDARS: [&str; 5] = ["us-federal", "us-al", "us-ms", "us-la", "fr"];

/// Whether `day` is a holiday in `calendar`. Unknown calendars are refused at load time.
pub fn is_holiday(calendar: &str, day: Date) -> bool {
    holidays(calendar, day.year()).contains(&day)
}

/// Every holiday of `calendar` in `year`.
pub fn holidays(calendar: &str, year: i16) -> Vec<Date> {
    match calendar {
        "us-federal" => us_federal(year),
        "us-al" => {
            let mut days = us_federal(year);
            days.push(nth_weekday(year, 4, Weekday::Monday, 4)); // Confederate Memorial Day
            days.push(nth_weekday(year, 6, Weekday::Monday, 1)); // Jefferson Davis' birthday
            days
        }
        "us-ms" => {
            let mut days = us_federal(year);
            days.push(last_weekday(year, 4, Weekday::Monday)); // Confederate Memorial Day
            days
        }
        "us-la" => {
            let mut days = us_federal(year);
            days.push(shift(easter(year), -47)); // Mardi Gras
            days.push(shift(easter(year), -2)); // Good Friday
            days
        }
        "fr" => {
            let easter = easter(year);
            vec![
                date(year, 1, 1),
                shift(easter, 1),
                date(year, 5, 1),
                date(year, 5, 8),
                shift(easter, 39),
                shift(easter, 50),
                date(year, 7, 14),
                date(year, 8, 15),
                date(year, 11, 1),
                date(year, 11, 11),
                date(year, 12, 25),
            ]
        }
        _ => Vec::new(),
    }
}

fn us_federal(year: i16) -> Vec<Date> {
    let fixed = [
        date(year, 1, 1),
        date(year, 6, 19),
        date(year, 7, 4),
        date(year, 11, 11),
        date(year, 12, 25),
    ];
    let mut days: Vec<Date> = fixed.to_vec();
    // A fixed holiday on Saturday is observed on Friday, on Sunday on Monday (5 U.S.C. 6103(b)).
    days.extend(fixed.iter().filter_map(|day| match day.weekday() {
        Weekday::Saturday => Some(shift(*day, -1)),
        Weekday::Sunday => Some(shift(*day, 1)),
        _ => None,
    }));
    // New Year's Day of next year observed on this year's December 31.
    if date(year + 1, 1, 1).weekday() == Weekday::Saturday {
        days.push(date(year, 12, 31));
    }
    days.extend([
        nth_weekday(year, 1, Weekday::Monday, 3), // Martin Luther King Jr. Day
        nth_weekday(year, 2, Weekday::Monday, 3), // Washington's Birthday
        last_weekday(year, 5, Weekday::Monday),   // Memorial Day
        nth_weekday(year, 9, Weekday::Monday, 1), // Labor Day
        nth_weekday(year, 10, Weekday::Monday, 2), // Columbus Day
        nth_weekday(year, 11, Weekday::Thursday, 4), // Thanksgiving Day
    ]);
    days
}

fn shift(day: Date, days: i32) -> Date {
    day.checked_add(jiff::Span::new().days(days))
        .expect("holidays stay within jiff's range")
}

/// The `n`th `weekday` of a month (n from 1).
fn nth_weekday(year: i16, month: i8, weekday: Weekday, n: i8) -> Date {
    date(year, month, 1)
        .nth_weekday_of_month(n, weekday)
        .expect("every month has a 1st to 4th of each weekday")
}

fn last_weekday(year: i16, month: i8, weekday: Weekday) -> Date {
    date(year, month, 1)
        .nth_weekday_of_month(-1, weekday)
        .expect("every month has a last of each weekday")
}

/// Easter Sunday in the Gregorian calendar (the anonymous "Meeus/Jones/Butcher" computus).
pub fn easter(year: i16) -> Date {
    let y = i32::from(year);
    let a = y % 19;
    let b = y / 100;
    let c = y % 100;
    let d = b / 4;
    let e = b % 4;
    let f = (b + 8) / 25;
    let g = (b - f + 1) / 3;
    let h = (19 * a + b - d - g + 15) % 30;
    let i = c / 4;
    let k = c % 4;
    let l = (32 + 2 * e + 2 * i - h - k) % 7;
    let m = (a + 11 * h + 22 * l) / 451;
    let month = (h + l - 7 * m + 114) / 31;
    let day = (h + l - 7 * m + 114) % 31 + 1;
    date(year, month as i8, day as i8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn easter_falls_on_known_dates() {
        for (year, month, day) in [
            (2000, 4, 23),
            (2008, 3, 23),
            (2019, 4, 21),
            (2024, 3, 31),
            (2025, 4, 20),
            (2026, 4, 5),
            (2027, 3, 28),
            (2038, 4, 25),
        ] {
            assert_eq!(easter(year), date(year, month, day), "{year}");
        }
    }

    #[test]
    fn us_federal_holidays_of_2026_and_2027() {
        let expect = |days: &[(i16, i8, i8)]| {
            for &(y, m, d) in days {
                assert!(is_holiday("us-federal", date(y, m, d)), "{y}-{m}-{d}");
            }
        };
        expect(&[
            (2026, 1, 1),
            (2026, 1, 19),
            (2026, 2, 16),
            (2026, 5, 25),
            (2026, 6, 19),
            (2026, 7, 3), // Independence Day on a Saturday, observed Friday
            (2026, 7, 4),
            (2026, 9, 7),
            (2026, 10, 12),
            (2026, 11, 11),
            (2026, 11, 26),
            (2026, 12, 25),
            (2027, 12, 24), // Christmas 2027 is a Saturday
            (2027, 12, 31), // New Year's Day 2028 is a Saturday
            (2027, 11, 25),
        ]);
        assert!(!is_holiday("us-federal", date(2026, 11, 27)));
        assert!(!is_holiday("us-federal", date(2026, 7, 6)));
    }

    #[test]
    fn french_holidays_move_with_easter() {
        let fr = |y, m, d| is_holiday("fr", date(y, m, d));
        // 2026: Easter April 5.
        assert!(fr(2026, 4, 6) && fr(2026, 5, 14) && fr(2026, 5, 25));
        // 2027: Easter March 28.
        assert!(fr(2027, 3, 29) && fr(2027, 5, 6) && fr(2027, 5, 17));
        assert!(fr(2026, 7, 14) && fr(2026, 5, 8) && fr(2026, 11, 1));
        assert!(
            !fr(2026, 4, 5),
            "Easter Sunday itself is a Sunday, not a listed holiday"
        );
        assert!(!fr(2026, 6, 19));
    }

    #[test]
    fn state_calendars_add_their_days() {
        assert!(is_holiday("us-la", date(2026, 2, 17)), "Mardi Gras 2026");
        assert!(
            is_holiday("us-al", date(2026, 4, 27)),
            "Confederate Memorial Day (AL)"
        );
        assert!(
            is_holiday("us-ms", date(2026, 4, 27)),
            "Confederate Memorial Day (MS)"
        );
        assert!(
            is_holiday("us-al", date(2026, 6, 1)),
            "Jefferson Davis' birthday"
        );
        assert!(!is_holiday("us-federal", date(2026, 2, 17)));
    }
}
