"""Country names and codes normalised to ISO 3166-1 alpha-2 with pycountry.

A grown application stores countries every way people type them: ``US``,
``usa``, ``United States``, ``UK``.  domicile maps what can be mapped without
guessing (codes, English names, a short list of common aliases) and returns
``None`` for the rest, which the census reports with its count.
"""

from __future__ import annotations

from functools import lru_cache

import pycountry

# Common names that are neither ISO codes nor pycountry names.  Kept short on
# purpose: every entry is a name people really use for exactly one country.
ALIASES: dict[str, str] = {
    "UK": "GB",
    "U.K.": "GB",
    "GREAT BRITAIN": "GB",
    "BRITAIN": "GB",
    "ENGLAND": "GB",
    "SCOTLAND": "GB",
    "WALES": "GB",
    "NORTHERN IRELAND": "GB",
    "U.S.": "US",
    "U.S.A.": "US",
    "AMERICA": "US",
    "UNITED STATES OF AMERICA": "US",
    "SOUTH KOREA": "KR",
    "KOREA": "KR",
    "NORTH KOREA": "KP",
    "RUSSIA": "RU",
    "VIETNAM": "VN",
    "IRAN": "IR",
    "SYRIA": "SY",
    "LAOS": "LA",
    "BOLIVIA": "BO",
    "VENEZUELA": "VE",
    "TANZANIA": "TZ",
    "MOLDOVA": "MD",
    "TAIWAN": "TW",
    "CZECHIA": "CZ",
    "HOLLAND": "NL",
    "THE NETHERLANDS": "NL",
    "TURKEY": "TR",
    "IVORY COAST": "CI",
    "UAE": "AE",
}


@lru_cache(maxsize=4096)
def normalize_country(value: object) -> str | None:
    """The ISO alpha-2 code for *value*, or None when it cannot be mapped.

    >>> normalize_country("usa"), normalize_country("United States"), normalize_country("uk")
    ('US', 'US', 'GB')
    """
    if value is None:
        return None
    text = str(value).strip()
    if not text:
        return None
    upper = text.upper()
    if upper in ALIASES:
        return ALIASES[upper]
    if len(upper) == 2 and upper.isalpha():
        # Only real alpha-2 codes: "XX" or "EU" must not pass as countries.
        country = pycountry.countries.get(alpha_2=upper)
        return country.alpha_2 if country else None
    try:
        found = pycountry.countries.lookup(text)
    except LookupError:
        return None
    return str(found.alpha_2)


def country_name(code: str) -> str:
    """A readable English name for an alpha-2 code (the code itself if unknown)."""
    country = pycountry.countries.get(alpha_2=code)
    return str(getattr(country, "common_name", None) or country.name) if country else code
