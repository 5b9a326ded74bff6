// Language tags: what containers write (ISO 639-2/B or /T, ISO 639-1, BCP 47),
// what HLS wants (BCP 47 in EXT-X-MEDIA LANGUAGE, a human NAME), and what
// MPEG-TS wants (ISO 639-2/B in the ISO_639_language_descriptor).
//
// The tables behind these functions are constexpr and sorted (binary search,
// nothing built at startup): every ISO 639-1 language with its 639-2/B and /T
// codes, the other ISO 639-2 codes and CLDR's three-letter languages, ISO 3166-1
// regions and UN M.49 areas, and a few scripts.
#pragma once

#include <string>
#include <string_view>

namespace khls::segmenter::internal {

/// BCP 47 tag for a language as containers tag it: ISO 639-2/B or /T ("fre", "fra" -> "fr", "ger"/"deu" -> "de",
/// "chi"/"zho" -> "zh"), ISO 639-1 ("FR" -> "fr"), or an already-BCP-47 tag ("pt-BR", "zh-Hant", "es-419"),
/// case-normalized (language lower, script title case, region upper; '_' accepted as a separator, surrounding
/// blanks and NULs ignored). Deprecated codes take their replacement ("iw" -> "he", "in" -> "id", "mol" -> "ro",
/// "scc" -> "sr", "scr" -> "hr"). Three-letter codes with no two-letter equivalent stay three letters ("haw").
/// "" for empty, "und", "mul", "zxx", "mis", a two-letter code that is not ISO 639-1, or anything that is not a
/// well-formed tag (the primary language subtag must be 2 or 3 letters: "e", "english", "12" give "").
std::string ToBcp47(std::string_view tag);

/// ISO 639-2/B code for MPEG-TS's ISO_639_language_descriptor ("fr" -> "fre", "de" -> "ger", "pt-BR" -> "por",
/// "haw" -> "haw"); "und" when unknown or empty. Accepts whatever ToBcp47 accepts.
std::string ToIso639_2B(std::string_view bcp47);

/// A display name for an EXT-X-MEDIA NAME: the language's own name (autonym, from CLDR), e.g. "English",
/// "Français", "Deutsch", "Español", "Italiano", "Português", "日本語", "中文", "한국어", "Русский",
/// "العربية", "हिन्दी", or its English name when CLDR has no autonym ("Afar"), with the script's and the
/// region's English names in parentheses when the tag has them ("pt-BR" -> "Português (Brazil)",
/// "zh-Hant-TW" -> "中文 (Traditional, Taiwan)", "es-419" -> "Español (Latin America)"; an unknown script or
/// region shows its code). "" when the language is unknown. Accepts whatever ToBcp47 accepts.
std::string LanguageName(std::string_view bcp47);

}  // namespace khls::segmenter::internal
