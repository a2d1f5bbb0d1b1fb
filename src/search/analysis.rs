//! Text analysis shared by indexing, querying and snippets, so the three always agree on what a
//! token is: runs of letters and digits, lowercased and folded to ASCII (the case- and
//! accent-insensitivity FTS5's `unicode61 remove_diacritics 2` gave).

use std::cell::RefCell;
use std::rc::Rc;

use crate::domain::{SearchTerms, Term};
use tantivy::tokenizer::{
    AsciiFoldingFilter, LowerCaser, RawTokenizer, TextAnalyzer, Token, TokenFilter, TokenStream,
    Tokenizer,
};

/// The tokenizer's name in the index.
pub const TOKENIZER: &str = "sessiond_folded";
/// The prefix field's tokenizer: [`analyzer`] followed by [`EdgeGrams`].
pub const PREFIX_TOKENIZER: &str = "sessiond_edge_grams";
/// The pair field's tokenizer: [`analyzer`] followed by [`Shingles`].
pub const PAIR_TOKENIZER: &str = "sessiond_pairs";

/// Tokens of this many bytes or more (base64 blobs and the like) are not indexed.
const MAX_TOKEN_BYTES: usize = 100;

/// The longest edge gram. A `prefix*` whose stem is at most this long is one scored term of the
/// prefix field. A longer stem is scored by its gram (its first this-many characters) and
/// matched exactly by the range of text-field terms it starts. Short grams are few distinct
/// terms shared by many words, long ones are mostly distinct terms: grams of up to 20
/// characters cost an index build 1.7x the CPU of grams of up to 5 (BENCHMARKS.md).
pub const MAX_GRAM_CHARS: usize = 5;

/// Only the start of a very long text is indexed (the same on both backends).
pub const MAX_INDEXED_BYTES: usize = 256 * 1024;

pub fn analyzer() -> TextAnalyzer {
    TextAnalyzer::from(Folded::default())
}

/// What the prefix field indexes: every leading part of every token of [`analyzer`].
pub fn prefix_analyzer() -> TextAnalyzer {
    TextAnalyzer::builder(Folded::default())
        .filter(EdgeGrams)
        .build()
}

/// What the pair field indexes: every two adjacent tokens of [`analyzer`] that are
/// [`paired`], as one term, so a two-word phrase of them is a single term that prunes like a word
/// instead of a position check of every document holding both words.
pub fn pair_analyzer() -> TextAnalyzer {
    TextAnalyzer::builder(Folded::default())
        .filter(Shingles)
        .build()
}

/// The tokens of all analysis: exactly what tantivy's `SimpleTokenizer`, then
/// `RemoveLongFilter` (under [`MAX_TOKEN_BYTES`]), `LowerCaser` and `AsciiFoldingFilter` give.
/// That chain took a fifth of an index build's CPU (BENCHMARKS.md), for two reasons:
///
/// - Every message's text is analysed three times, once for each field that indexes it, one
///   after the other on the same thread. The tokens of the last text (of up to
///   [`MEMO_MAX_BYTES`]) analysed on a thread are kept, and the same text again replays them.
/// - Each piece of the chain looks at every token again, and the tokenizer decodes every
///   character. Here one pass finds and lowercases an ASCII token; only a token with another
///   character goes through tantivy's own two filters, so the two cannot disagree on folding it.
#[derive(Clone)]
pub struct Folded {
    token: Token,
    fold: Fold,
}

/// `LowerCaser` and `AsciiFoldingFilter` over a whole token.
type Fold = <AsciiFoldingFilter as TokenFilter>::Tokenizer<
    <LowerCaser as TokenFilter>::Tokenizer<RawTokenizer>,
>;

/// The longest text whose tokens are kept for the next analysis of the same text. Most
/// messages are shorter; a longer one is analysed afresh each time. A thread that analysed a
/// text keeps at most this, its tokens' texts and 40 bytes a token: about 350 KB for a text of
/// one-letter words, a few tens of KB for prose.
const MEMO_MAX_BYTES: usize = 16 * 1024;

impl Default for Folded {
    fn default() -> Folded {
        Folded {
            token: Token::default(),
            fold: AsciiFoldingFilter.transform(LowerCaser.transform(RawTokenizer::default())),
        }
    }
}

impl Tokenizer for Folded {
    type TokenStream<'a> = FoldedStream<'a>;

    fn token_stream<'a>(&'a mut self, text: &'a str) -> FoldedStream<'a> {
        self.token.reset();
        let from = if text.len() <= MEMO_MAX_BYTES {
            Tokens::Memo(analysed(text, &mut self.fold), 0)
        } else {
            Tokens::Scan(Scanner::new(text))
        };
        FoldedStream {
            from,
            token: &mut self.token,
            fold: &mut self.fold,
        }
    }
}

pub struct FoldedStream<'a> {
    from: Tokens<'a>,
    token: &'a mut Token,
    fold: &'a mut Fold,
}

/// Where a stream's tokens come from: a text's kept tokens (and the next one's index), or the
/// text itself.
enum Tokens<'a> {
    Memo(Rc<Analysed>, usize),
    Scan(Scanner<'a>),
}

impl TokenStream for FoldedStream<'_> {
    fn advance(&mut self) -> bool {
        match &mut self.from {
            Tokens::Scan(scanner) => scanner.next(self.fold, self.token),
            Tokens::Memo(analysed, next) => {
                let Some(kept) = analysed.tokens.get(*next) else {
                    return false;
                };
                *next += 1;
                self.token.text.clear();
                self.token.text.push_str(&analysed.words[kept.text.clone()]);
                self.token.offset_from = kept.offset_from;
                self.token.offset_to = kept.offset_to;
                self.token.position = kept.position;
                true
            }
        }
    }

    fn token(&self) -> &Token {
        self.token
    }

    fn token_mut(&mut self) -> &mut Token {
        self.token
    }
}

/// A text and its tokens, their texts one after the other in `words`.
#[derive(Default)]
struct Analysed {
    text: String,
    words: String,
    tokens: Vec<Kept>,
}

/// A kept token: its text (a range of [`Analysed::words`]), its offsets and its position.
struct Kept {
    text: std::ops::Range<usize>,
    offset_from: usize,
    offset_to: usize,
    position: usize,
}

thread_local! {
    static LAST: RefCell<Option<Rc<Analysed>>> = const { RefCell::new(None) };
}

/// `text`'s tokens: those kept on this thread when it was the text analysed last, else found
/// now (and kept in their place).
fn analysed(text: &str, fold: &mut Fold) -> Rc<Analysed> {
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if let Some(kept) = last.as_ref()
            && kept.text == text
        {
            return kept.clone();
        }
        // The last one's buffers, unless a stream still replays it.
        let mut fresh = last
            .take()
            .and_then(|kept| Rc::try_unwrap(kept).ok())
            .unwrap_or_default();
        fresh.text.clear();
        fresh.text.push_str(text);
        fresh.words.clear();
        fresh.tokens.clear();
        let (mut scanner, mut token) = (Scanner::new(text), Token::default());
        while scanner.next(fold, &mut token) {
            let start = fresh.words.len();
            fresh.words.push_str(&token.text);
            fresh.tokens.push(Kept {
                text: start..fresh.words.len(),
                offset_from: token.offset_from,
                offset_to: token.offset_to,
                position: token.position,
            });
        }
        let fresh = Rc::new(fresh);
        *last = Some(fresh.clone());
        fresh
    })
}

/// Finds the tokens of a text, one at a time.
struct Scanner<'a> {
    text: &'a str,
    /// Where the next token is looked for.
    at: usize,
    /// The last token's position.
    position: usize,
}

impl<'a> Scanner<'a> {
    fn new(text: &'a str) -> Scanner<'a> {
        Scanner {
            text,
            at: 0,
            position: usize::MAX,
        }
    }

    /// The character at byte `at` when it is a letter or digit (`char::is_alphanumeric`), as
    /// its length and whether it is ASCII; `None` when it is not, or the text ends.
    fn word_char(&self, at: usize) -> Option<(usize, bool)> {
        let byte = *self.text.as_bytes().get(at)?;
        if byte.is_ascii() {
            return byte.is_ascii_alphanumeric().then_some((1, true));
        }
        let c = self.text[at..].chars().next()?;
        c.is_alphanumeric().then_some((c.len_utf8(), false))
    }

    /// Writes the next token into `token`; `false` when there is none.
    fn next(&mut self, fold: &mut Fold, token: &mut Token) -> bool {
        loop {
            let start = loop {
                if self.at >= self.text.len() {
                    return false;
                }
                if self.word_char(self.at).is_some() {
                    break self.at;
                }
                self.at += self.text[self.at..]
                    .chars()
                    .next()
                    .map_or(1, char::len_utf8);
            };
            let mut ascii = true;
            while let Some((len, is_ascii)) = self.word_char(self.at) {
                ascii &= is_ascii;
                self.at += len;
            }
            // Every token takes a position, also one too long to keep: a phrase never
            // matches across it.
            self.position = self.position.wrapping_add(1);
            let word = &self.text[start..self.at];
            if word.len() >= MAX_TOKEN_BYTES {
                continue;
            }
            token.offset_from = start;
            token.offset_to = self.at;
            token.position = self.position;
            token.text.clear();
            if ascii {
                token.text.push_str(word);
                token.text.make_ascii_lowercase();
            } else {
                let mut folded = fold.token_stream(word);
                if folded.advance() {
                    token.text.push_str(&folded.token().text);
                }
            }
            return true;
        }
    }
}

/// Words longer than this are not paired (see [`paired`]).
pub const PAIRED_WORD_MAX_BYTES: usize = 6;

/// Whether two adjacent tokens are indexed as one pair term, so a two-word phrase of them is one
/// term query rather than a phrase query on the text field. Only short words pair. Frequent
/// words are short (in natural language as in code), and a phrase of two frequent words is the
/// phrase query that checks the positions of very many documents. A phrase with a long word is
/// cheap as a phrase query, because the longer word's short posting list drives it. Pairing
/// every two words made the pair field's term dictionary (most pairs occur once) the largest
/// part of the index and about half of an index build's CPU.
pub fn paired(first: &str, second: &str) -> bool {
    first.len() <= PAIRED_WORD_MAX_BYTES && second.len() <= PAIRED_WORD_MAX_BYTES
}

/// The pair term of two adjacent tokens. Tokens never hold a space, so the join is unambiguous.
pub fn pair(first: &str, second: &str) -> String {
    let mut out = String::with_capacity(first.len() + 1 + second.len());
    out.push_str(first);
    out.push(' ');
    out.push_str(second);
    out
}

/// The first [`MAX_INDEXED_BYTES`] of `text`, cut at a character boundary.
pub fn indexed_part(text: &str) -> &str {
    if text.len() <= MAX_INDEXED_BYTES {
        return text;
    }
    let mut end = MAX_INDEXED_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The tokens a query's terms stand for, as snippets and the tail's match test read them.
#[derive(Debug, Default)]
pub struct QueryWords {
    /// Tokens a match must hold exactly.
    pub words: Vec<String>,
    /// The last token of each `prefix*` term: a match holds a token starting with it.
    pub prefixes: Vec<String>,
    /// Some term has no token at all (only a too-long one), so nothing matches.
    pub empty_term: bool,
}

impl QueryWords {
    pub fn of(terms: &SearchTerms) -> QueryWords {
        let mut analyzer = analyzer();
        let mut out = QueryWords::default();
        for term in terms.terms() {
            let mut parts: Vec<String> = tokens(&mut analyzer, term.text())
                .into_iter()
                .map(|t| t.text)
                .collect();
            if matches!(term, Term::Prefix(_))
                && let Some(stem) = parts.pop()
            {
                out.prefixes.push(stem);
            } else if parts.is_empty() {
                out.empty_term = true;
            }
            out.words.extend(parts);
        }
        out
    }
}

pub fn tokens(analyzer: &mut TextAnalyzer, text: &str) -> Vec<Token> {
    let mut stream = analyzer.token_stream(text);
    let mut out = Vec::new();
    while stream.advance() {
        out.push(stream.token().clone());
    }
    out
}

/// The edge gram a prefix query looks up: the stem itself, or its first characters.
pub fn gram(stem: &str) -> &str {
    match stem.char_indices().nth(MAX_GRAM_CHARS) {
        Some((end, _)) => &stem[..end],
        None => stem,
    }
}

/// A token filter emitting every leading part (1..=[`MAX_GRAM_CHARS`] characters) of every
/// token, at the token's position, so `stem*` is a single scored term of the prefix field.
///
/// A filter inside tantivy's analysis rather than pre-tokenized text: tantivy serializes a
/// pre-tokenized value to JSON and back on its way to the indexing thread, which was a fifth of
/// an index build's CPU.
#[derive(Clone, Copy, Debug)]
pub struct EdgeGrams;

impl TokenFilter for EdgeGrams {
    type Tokenizer<T: Tokenizer> = EdgeGramFilter<T>;

    fn transform<T: Tokenizer>(self, tokenizer: T) -> EdgeGramFilter<T> {
        EdgeGramFilter { tokenizer }
    }
}

#[derive(Clone)]
pub struct EdgeGramFilter<T> {
    tokenizer: T,
}

impl<T: Tokenizer> Tokenizer for EdgeGramFilter<T> {
    type TokenStream<'a> = EdgeGramStream<T::TokenStream<'a>>;

    fn token_stream<'a>(&'a mut self, text: &'a str) -> Self::TokenStream<'a> {
        EdgeGramStream {
            tail: self.tokenizer.token_stream(text),
            token: Token::default(),
            word: String::new(),
            end: 0,
            emitted: MAX_GRAM_CHARS,
        }
    }
}

pub struct EdgeGramStream<S> {
    tail: S,
    /// The gram handed out last.
    token: Token,
    /// The token whose grams are being handed out, the byte end of the last gram, and how many
    /// grams of it were handed out.
    word: String,
    end: usize,
    emitted: usize,
}

impl<S: TokenStream> TokenStream for EdgeGramStream<S> {
    fn advance(&mut self) -> bool {
        loop {
            if self.emitted < MAX_GRAM_CHARS
                && let Some(c) = self.word[self.end..].chars().next()
            {
                self.end += c.len_utf8();
                self.emitted += 1;
                self.token.text.clear();
                self.token.text.push_str(&self.word[..self.end]);
                return true;
            }
            if !self.tail.advance() {
                return false;
            }
            let next = self.tail.token();
            self.word.clear();
            self.word.push_str(&next.text);
            self.token.offset_from = next.offset_from;
            self.token.offset_to = next.offset_to;
            self.token.position = next.position;
            self.token.position_length = 1;
            self.end = 0;
            self.emitted = 0;
        }
    }

    fn token(&self) -> &Token {
        &self.token
    }

    fn token_mut(&mut self) -> &mut Token {
        &mut self.token
    }
}

/// A token filter emitting, for every token that directly follows another and is [`paired`]
/// with it, the two as one [`pair`] at the first one's position. Tokens that only look adjacent
/// because a too-long token between them was dropped do not pair: a phrase query on the text
/// field would not match them either.
#[derive(Clone, Copy, Debug)]
pub struct Shingles;

impl TokenFilter for Shingles {
    type Tokenizer<T: Tokenizer> = ShingleFilter<T>;

    fn transform<T: Tokenizer>(self, tokenizer: T) -> ShingleFilter<T> {
        ShingleFilter { tokenizer }
    }
}

#[derive(Clone)]
pub struct ShingleFilter<T> {
    tokenizer: T,
}

impl<T: Tokenizer> Tokenizer for ShingleFilter<T> {
    type TokenStream<'a> = ShingleStream<T::TokenStream<'a>>;

    fn token_stream<'a>(&'a mut self, text: &'a str) -> Self::TokenStream<'a> {
        ShingleStream {
            tail: self.tokenizer.token_stream(text),
            token: Token::default(),
            previous: None,
        }
    }
}

pub struct ShingleStream<S> {
    tail: S,
    /// The pair handed out last.
    token: Token,
    /// The token before the next one: its text, start offset and position.
    previous: Option<(String, usize, usize)>,
}

impl<S: TokenStream> TokenStream for ShingleStream<S> {
    fn advance(&mut self) -> bool {
        while self.tail.advance() {
            let next = self.tail.token();
            let previous =
                self.previous
                    .replace((next.text.clone(), next.offset_from, next.position));
            if let Some((text, from, position)) = previous
                && next.position == position + 1
                && paired(&text, &next.text)
            {
                self.token.text.clear();
                self.token.text.push_str(&text);
                self.token.text.push(' ');
                self.token.text.push_str(&next.text);
                self.token.offset_from = from;
                self.token.offset_to = next.offset_to;
                self.token.position = position;
                self.token.position_length = 2;
                return true;
            }
        }
        false
    }

    fn token(&self) -> &Token {
        &self.token
    }

    fn token_mut(&mut self) -> &mut Token {
        &mut self.token
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(text: &str) -> Vec<String> {
        tokens(&mut analyzer(), text)
            .into_iter()
            .map(|t| t.text)
            .collect()
    }

    #[test]
    fn splits_on_anything_but_letters_and_digits_and_folds() {
        assert_eq!(
            texts("LÚNCH user_id=42 col:x 日本語"),
            ["lunch", "user", "id", "42", "col", "x", "日本語"]
        );
    }

    /// The chain of tantivy's own pieces that [`Folded`] does in one pass.
    fn chain() -> TextAnalyzer {
        use tantivy::tokenizer::{RemoveLongFilter, SimpleTokenizer};
        TextAnalyzer::builder(SimpleTokenizer::default())
            .filter(RemoveLongFilter::limit(MAX_TOKEN_BYTES))
            .filter(LowerCaser)
            .filter(AsciiFoldingFilter)
            .build()
    }

    fn described(analyzer: &mut TextAnalyzer, text: &str) -> Vec<(String, usize, usize, usize)> {
        tokens(analyzer, text)
            .into_iter()
            .map(|t| (t.text, t.offset_from, t.offset_to, t.position))
            .collect()
    }

    #[test]
    fn one_pass_gives_what_tantivys_chain_gives() {
        // Separators, ASCII, accents and other cases, scripts without case, letters whose
        // lowercase is longer (İ) or that fold to several (ß, Æ), digits beyond ASCII (², ٣),
        // combining marks, emoji, and a word near the length limit.
        let pieces = [
            " ",
            ",",
            "_",
            "-",
            "\n",
            "a",
            "Z",
            "7",
            "é",
            "Ü",
            "ß",
            "İ",
            "Æ",
            "ﬁ",
            "²",
            "٣",
            "日本",
            "テスト",
            "Σ",
            "ς",
            "\u{301}",
            "😀",
            "\u{0}",
            "user_id=42",
            "ÀÉÎÕÜ",
        ];
        let long_word = "x".repeat(MAX_TOKEN_BYTES - 2);
        let (mut one, mut reference) = (analyzer(), chain());
        let mut rng = fastrand::Rng::with_seed(7);
        for round in 0..5000 {
            let mut text = String::new();
            for _ in 0..rng.usize(0..40) {
                text.push_str(pieces[rng.usize(..pieces.len())]);
                if round % 10 == 0 && rng.u8(..) < 8 {
                    text.push_str(&long_word);
                }
            }
            let expected = described(&mut reference, &text);
            assert_eq!(described(&mut one, &text), expected, "{text:?}");
            // Again, now from the tokens kept.
            assert_eq!(described(&mut one, &text), expected, "{text:?}");
        }
        // A text too long to keep is scanned each time.
        let mut long = String::new();
        while long.len() <= MEMO_MAX_BYTES {
            long.push_str(pieces[rng.usize(..pieces.len())]);
        }
        let expected = described(&mut reference, &long);
        assert_eq!(described(&mut one, &long), expected);
        assert_eq!(described(&mut one, &long), expected);
        // Two streams at once, of two texts, on one thread.
        let (mut first, mut second) = (analyzer(), analyzer());
        let mut a = first.token_stream("alpha beta");
        let mut b = second.token_stream("gamma");
        let mut seen = Vec::new();
        while a.advance() {
            seen.push(a.token().text.clone());
            if b.advance() {
                seen.push(b.token().text.clone());
            }
        }
        assert_eq!(seen, ["alpha", "gamma", "beta"]);
        for len in MAX_TOKEN_BYTES - 2..MAX_TOKEN_BYTES + 2 {
            for word in ["a".repeat(len), format!("é{}", "a".repeat(len - 2))] {
                let text = format!("b {word} c");
                assert_eq!(described(&mut one, &text), described(&mut reference, &text));
            }
        }
    }

    #[test]
    fn grams_cover_every_prefix_up_to_the_limit() {
        let grams: Vec<(String, usize)> = tokens(&mut prefix_analyzer(), "Ab é")
            .into_iter()
            .map(|t| (t.text, t.position))
            .collect();
        let expected = [("a", 0), ("ab", 0), ("e", 1)].map(|(t, p)| (t.to_owned(), p));
        assert_eq!(grams, expected);
        let long = "y".repeat(30);
        let grams = tokens(&mut prefix_analyzer(), &format!("{long} z"));
        assert_eq!(grams.len(), MAX_GRAM_CHARS + 1);
        assert_eq!(grams[MAX_GRAM_CHARS - 1].text, "y".repeat(MAX_GRAM_CHARS));
        assert_eq!(grams[MAX_GRAM_CHARS].text, "z");
        assert_eq!(gram(&"x".repeat(30)), "x".repeat(MAX_GRAM_CHARS));
        assert_eq!(gram("ab"), "ab");
    }

    #[test]
    fn pairs_join_adjacent_tokens_only() {
        let pairs: Vec<(String, usize)> = tokens(&mut pair_analyzer(), "Déjà vu, user_id")
            .into_iter()
            .map(|t| (t.text, t.position))
            .collect();
        let expected =
            [("deja vu", 0), ("vu user", 1), ("user id", 2)].map(|(t, p)| (t.to_owned(), p));
        assert_eq!(pairs, expected);
        assert_eq!(pair("deja", "vu"), "deja vu");
        // A dropped (too long) token in between breaks the pair, as it breaks a phrase.
        let long = "y".repeat(MAX_TOKEN_BYTES + 1);
        let pairs = tokens(&mut pair_analyzer(), &format!("a {long} b c"));
        let texts: Vec<String> = pairs.into_iter().map(|t| t.text).collect();
        assert_eq!(texts, ["b c"]);
        assert!(tokens(&mut pair_analyzer(), "alone").is_empty());
        // Only short words pair; a phrase with a longer one is a phrase query.
        let texts: Vec<String> = tokens(&mut pair_analyzer(), "fix the connection pool in it")
            .into_iter()
            .map(|t| t.text)
            .collect();
        assert_eq!(texts, ["fix the", "pool in", "in it"]);
        assert!(paired("sixsix", "ab") && !paired("seven77", "ab"));
    }
}
