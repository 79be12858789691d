//! Seeded text generation: words, sentences and paragraphs in English and a handful of other
//! languages, with realistic (log-normal-ish) lengths.
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A language of generated text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lang {
    En,
    Es,
    Fr,
    De,
    Pt,
    Ru,
    Zh,
    Ja,
    Ko,
}

impl Lang {
    /// The non-English languages, drawn uniformly when a record is not English.
    pub const OTHERS: [Lang; 8] = [
        Lang::Es,
        Lang::Fr,
        Lang::De,
        Lang::Pt,
        Lang::Ru,
        Lang::Zh,
        Lang::Ja,
        Lang::Ko,
    ];

    fn words(self) -> &'static [&'static str] {
        match self {
            Lang::En => EN,
            Lang::Es => ES,
            Lang::Fr => FR,
            Lang::De => DE,
            Lang::Pt => PT,
            Lang::Ru => RU,
            Lang::Zh => ZH,
            Lang::Ja => JA,
            Lang::Ko => KO,
        }
    }

    /// Whether words are written without spaces between them.
    fn unspaced(self) -> bool {
        matches!(self, Lang::Zh | Lang::Ja)
    }

    fn full_stop(self) -> &'static str {
        match self {
            Lang::Zh | Lang::Ja => "。",
            _ => ".",
        }
    }
}

/// A seeded generator for one record: the same (seed, stream, index) gives the same text, so
/// records can be generated in parallel in any order.
pub struct Gen {
    pub rng: ChaCha8Rng,
}

impl Gen {
    pub fn new(seed: u64, stream: &str, index: u64) -> Self {
        let mut h = xxhash_rust::xxh3::Xxh3::with_seed(seed);
        h.update(stream.as_bytes());
        h.update(&index.to_le_bytes());
        Gen {
            rng: ChaCha8Rng::seed_from_u64(h.digest()),
        }
    }

    pub fn chance(&mut self, p: f64) -> bool {
        self.rng.random_bool(p.clamp(0.0, 1.0))
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        self.rng.random_range(lo..=hi.max(lo))
    }

    pub fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.rng.random_range(0..xs.len())]
    }

    /// A length around `median` with a long right tail (log-normal with sigma ≈ `spread`),
    /// clamped to `lo..=hi`.
    pub fn length(&mut self, median: f64, spread: f64, lo: usize, hi: usize) -> usize {
        // Sum of three uniforms ≈ normal (mean 1.5, sd 0.5).
        let z: f64 = (0..3).map(|_| self.rng.random::<f64>()).sum::<f64>() * 2.0 - 3.0;
        ((median * (z * spread).exp()).round() as usize).clamp(lo, hi)
    }

    /// English with probability `1 - other`, else one of [`Lang::OTHERS`].
    pub fn lang(&mut self, other: f64) -> Lang {
        if self.chance(other) {
            *self.pick(&Lang::OTHERS)
        } else {
            Lang::En
        }
    }

    /// A random alphanumeric string.
    pub fn alnum(&mut self, n: usize) -> String {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        (0..n).map(|_| *self.pick(A) as char).collect()
    }

    /// Appends one sentence of about `n` words.
    pub fn sentence_into(&mut self, lang: Lang, n: usize, out: &mut String) {
        let words = lang.words();
        for k in 0..n.max(2) {
            let w = *self.pick(words);
            if k == 0 {
                let mut c = w.chars();
                if let Some(f) = c.next() {
                    out.extend(f.to_uppercase());
                    out.push_str(c.as_str());
                }
            } else {
                if !lang.unspaced() {
                    out.push(' ');
                }
                out.push_str(w);
                if k + 1 < n && !lang.unspaced() && self.rng.random_ratio(1, 12) {
                    out.push(',');
                }
            }
        }
        out.push_str(lang.full_stop());
    }

    /// About `words` words of prose, in sentences of 5-22 words.
    pub fn prose(&mut self, lang: Lang, words: usize) -> String {
        let mut s = String::with_capacity(words * 7);
        let mut left = words.max(2);
        while left > 0 {
            let n = self.range(5, 22).min(left.max(2));
            if !s.is_empty() && !lang.unspaced() {
                s.push(' ');
            }
            self.sentence_into(lang, n, &mut s);
            left = left.saturating_sub(n);
        }
        s
    }

    /// A question of about `words` words.
    pub fn question(&mut self, lang: Lang, words: usize) -> String {
        let mut s = String::with_capacity(words * 7);
        let opener = match lang {
            Lang::En => *self.pick(EN_OPENERS),
            Lang::Es => "¿Cómo",
            Lang::Fr => "Comment",
            Lang::De => "Wie",
            Lang::Pt => "Como",
            Lang::Ru => "Как",
            Lang::Zh => "如何",
            Lang::Ja => "どうやって",
            Lang::Ko => "어떻게",
        };
        s.push_str(opener);
        let words_list = lang.words();
        for _ in 0..words.max(2) {
            if !lang.unspaced() {
                s.push(' ');
            }
            s.push_str(words_list[self.range(0, words_list.len() - 1)]);
        }
        s.push_str(match lang {
            Lang::Zh | Lang::Ja => "？",
            _ => "?",
        });
        s
    }

    /// A short code snippet (for ShareGPT-style answers).
    pub fn code(&mut self, lines: usize) -> String {
        let mut s = String::new();
        for _ in 0..lines {
            let name = *self.pick(IDENTS);
            let other = *self.pick(IDENTS);
            match self.range(0, 3) {
                0 => s.push_str(&format!("{name} = {other}({})\n", self.range(0, 99))),
                1 => s.push_str(&format!("for {name} in {other}:\n    print({name})\n")),
                2 => s.push_str(&format!("def {name}({other}):\n    return {other} * 2\n")),
                _ => s.push_str(&format!(
                    "if {name} > {}:\n    {other} += 1\n",
                    self.range(0, 9)
                )),
            }
        }
        s
    }
}

const EN_OPENERS: &[&str] = &[
    "How do I",
    "Can you explain",
    "What is the best way to",
    "Why does",
    "Could you help me",
    "Write a short",
    "Explain how to",
    "What are the main",
    "Is it possible to",
    "Give me",
];

const IDENTS: &[&str] = &[
    "items", "total", "value", "result", "count", "data", "users", "config", "index", "buffer",
    "path", "name", "score", "batch", "model", "tokens",
];

const EN: &[&str] = &[
    "the", "of", "and", "to", "a", "in", "is", "it", "you", "that", "he", "was", "for", "on",
    "are", "with", "as", "his", "they", "be", "at", "one", "have", "this", "from", "or", "had",
    "by", "word", "but", "what", "some", "we", "can", "out", "other", "were", "all", "there",
    "when", "up", "use", "your", "how", "said", "an", "each", "she", "which", "do", "their",
    "time", "if", "will", "way", "about", "many", "then", "them", "write", "would", "like", "so",
    "these", "her", "long", "make", "thing", "see", "him", "two", "has", "look", "more", "day",
    "could", "go", "come", "did", "number", "sound", "no", "most", "people", "my", "over", "know",
    "water", "than", "call", "first", "who", "may", "down", "side", "been", "now", "find", "any",
    "new", "work", "part", "take", "get", "place", "made", "live", "where", "after", "back",
    "little", "only", "round", "man", "year", "came", "show", "every", "good", "me", "give", "our",
    "under", "name", "very", "through", "just", "form", "sentence", "great", "think", "say",
    "help", "low", "line", "differ", "turn", "cause", "much", "mean", "before", "move", "right",
    "boy", "old", "too", "same", "tell", "does", "set", "three", "want", "air", "well", "also",
    "play", "small", "end", "put", "home", "read", "hand", "port", "large", "spell", "add", "even",
    "land", "here", "must", "big", "high", "such", "follow", "act", "why", "ask", "men", "change",
    "went", "light", "kind", "off", "need", "house", "picture", "try", "us", "again", "animal",
    "point", "mother", "world", "near", "build", "self", "earth", "father", "head", "stand", "own",
    "page", "should", "country", "found", "answer", "school", "grow", "study", "still", "learn",
    "plant", "cover", "food", "sun", "four", "between", "state", "keep", "eye", "never", "last",
    "let", "thought", "city", "tree", "cross", "farm", "hard", "start", "might", "story", "saw",
    "far", "sea", "draw", "left", "late", "run", "while", "press", "close", "night", "real",
    "life", "few", "north", "open", "seem", "together", "next", "white", "children", "begin",
    "got", "walk", "example", "ease", "paper", "group", "always", "music", "those", "both", "mark",
    "often", "letter", "until", "mile", "river", "car", "feet", "care", "second", "book", "carry",
    "took", "science", "eat", "room", "friend", "began", "idea", "fish", "mountain", "stop",
    "once", "base", "hear", "horse", "cut", "sure", "watch", "color", "face", "wood", "main",
    "enough", "plain", "girl", "usual", "young", "ready", "above", "ever", "red", "list", "though",
    "feel", "talk", "bird", "soon", "body", "dog", "family", "direct", "pose", "leave", "song",
    "measure", "door", "product", "black", "short", "numeral", "class", "wind", "question",
    "happen", "complete", "ship", "area", "half", "rock", "order", "fire", "south", "problem",
    "piece", "told", "knew", "pass", "since", "top", "whole", "king", "space", "heard", "best",
    "hour", "better", "true", "during", "hundred", "five", "remember", "step", "early", "hold",
    "west", "ground", "interest", "reach", "fast", "verb", "sing", "listen", "six", "table",
    "travel", "less", "morning", "ten", "simple", "several", "vowel", "toward", "war", "lay",
    "against", "pattern", "slow", "center", "love", "person", "money", "serve", "appear", "road",
    "map", "rain", "rule", "govern", "pull", "cold", "notice", "voice", "unit", "power", "town",
    "fine", "certain", "fly", "fall", "lead", "cry", "dark", "machine", "note", "wait", "plan",
    "figure", "star", "box", "noun", "field", "rest", "correct", "able", "pound", "done", "beauty",
    "drive", "stood", "contain", "front", "teach", "week", "final", "gave", "green", "oh", "quick",
    "develop", "ocean", "warm", "free", "minute", "strong", "special", "mind", "behind", "clear",
    "tail", "produce", "fact", "street", "inch", "multiply", "nothing", "course", "stay", "wheel",
    "full", "force", "blue", "object", "decide", "surface", "deep", "moon", "island", "foot",
    "system", "busy", "test", "record", "boat", "common", "gold", "possible", "plane", "stead",
    "dry", "wonder", "laugh", "thousand", "ago", "ran", "check", "game", "shape", "equate", "miss",
    "brought", "heat", "snow", "tire", "bring", "yes", "distant", "fill", "east", "paint",
    "language", "among", "data", "function", "model", "training", "network", "value", "error",
    "file", "server", "database", "query",
];

const ES: &[&str] = &[
    "el",
    "la",
    "de",
    "que",
    "y",
    "en",
    "un",
    "ser",
    "se",
    "no",
    "haber",
    "por",
    "con",
    "su",
    "para",
    "como",
    "estar",
    "tener",
    "le",
    "lo",
    "todo",
    "pero",
    "más",
    "hacer",
    "o",
    "poder",
    "decir",
    "este",
    "ir",
    "otro",
    "ese",
    "si",
    "me",
    "ya",
    "ver",
    "porque",
    "dar",
    "cuando",
    "él",
    "muy",
    "sin",
    "vez",
    "mucho",
    "saber",
    "qué",
    "sobre",
    "mi",
    "alguno",
    "mismo",
    "yo",
    "también",
    "hasta",
    "año",
    "dos",
    "querer",
    "entre",
    "así",
    "primero",
    "desde",
    "grande",
    "eso",
    "ni",
    "nos",
    "llegar",
    "pasar",
    "tiempo",
    "ella",
    "sí",
    "día",
    "uno",
    "bien",
    "poco",
    "deber",
    "entonces",
    "poner",
    "cosa",
    "tanto",
    "hombre",
    "parecer",
    "nuestro",
    "tan",
    "donde",
    "ahora",
    "parte",
    "después",
    "vida",
    "quedar",
    "siempre",
    "creer",
    "hablar",
    "llevar",
    "dejar",
    "nada",
    "cada",
    "seguir",
    "menos",
    "nuevo",
    "encontrar",
    "algo",
    "solo",
    "decir",
    "mundo",
    "casa",
    "trabajo",
    "ciudad",
    "agua",
];

const FR: &[&str] = &[
    "le", "de", "un", "être", "et", "à", "il", "avoir", "ne", "je", "son", "que", "se", "qui",
    "ce", "dans", "en", "du", "elle", "au", "pour", "pas", "vous", "par", "sur", "faire", "plus",
    "dire", "me", "on", "mon", "lui", "nous", "comme", "mais", "pouvoir", "avec", "tout", "y",
    "aller", "voir", "bien", "où", "sans", "tu", "ou", "leur", "homme", "si", "deux", "mari",
    "moi", "vouloir", "te", "femme", "venir", "quand", "grand", "celui", "notre", "devoir", "là",
    "jour", "prendre", "même", "votre", "rien", "petit", "encore", "aussi", "quelque", "dont",
    "tout", "mer", "trouver", "donner", "temps", "ça", "peu", "falloir", "sous", "parler", "alors",
    "main", "chose", "savoir", "mettre", "monde", "maison", "travail", "ville", "eau", "toujours",
    "pourquoi", "beaucoup", "très",
];

const DE: &[&str] = &[
    "der", "die", "und", "in", "den", "von", "zu", "das", "mit", "sich", "des", "auf", "für",
    "ist", "im", "dem", "nicht", "ein", "eine", "als", "auch", "es", "an", "werden", "aus", "er",
    "hat", "dass", "sie", "nach", "wird", "bei", "einer", "um", "am", "sind", "noch", "wie",
    "einem", "über", "einen", "so", "zum", "war", "haben", "nur", "oder", "aber", "vor", "zur",
    "bis", "mehr", "durch", "man", "sein", "wurde", "sei", "Jahr", "Zeit", "Menschen", "immer",
    "heute", "schon", "wenn", "Stadt", "Arbeit", "Wasser", "Haus", "können", "machen", "gehen",
    "sehen", "wissen", "kommen", "geben", "neue", "große", "kleine", "gut", "viele", "Frage",
    "Antwort", "zwischen", "weil", "warum", "wirklich",
];

const PT: &[&str] = &[
    "o", "de", "a", "que", "e", "do", "da", "em", "um", "para", "é", "com", "não", "uma", "os",
    "no", "se", "na", "por", "mais", "as", "dos", "como", "mas", "foi", "ao", "ele", "das", "tem",
    "à", "seu", "sua", "ou", "ser", "quando", "muito", "há", "nos", "já", "está", "eu", "também",
    "só", "pelo", "pela", "até", "isso", "ela", "entre", "era", "depois", "sem", "mesmo", "aos",
    "ter", "seus", "quem", "nas", "me", "esse", "eles", "estão", "você", "tinha", "foram", "essa",
    "num", "nem", "suas", "meu", "às", "minha", "têm", "numa", "pelos", "elas", "havia", "seja",
    "qual", "será", "nós", "tenho", "lhe", "cidade", "trabalho", "água", "casa", "mundo", "sempre",
    "porque", "obrigado", "então",
];

const RU: &[&str] = &[
    "и",
    "в",
    "не",
    "на",
    "я",
    "быть",
    "он",
    "с",
    "что",
    "а",
    "по",
    "это",
    "она",
    "этот",
    "к",
    "но",
    "они",
    "мы",
    "как",
    "из",
    "у",
    "который",
    "то",
    "за",
    "свой",
    "что",
    "весь",
    "год",
    "от",
    "так",
    "о",
    "для",
    "ты",
    "же",
    "все",
    "тот",
    "мочь",
    "вы",
    "человек",
    "такой",
    "его",
    "сказать",
    "только",
    "или",
    "ещё",
    "бы",
    "себя",
    "один",
    "когда",
    "уже",
    "до",
    "время",
    "если",
    "сам",
    "другой",
    "вот",
    "говорить",
    "наш",
    "мой",
    "знать",
    "стать",
    "при",
    "чтобы",
    "дело",
    "жизнь",
    "кто",
    "первый",
    "очень",
    "два",
    "день",
    "её",
    "новый",
    "рука",
    "даже",
    "во",
    "со",
    "раз",
    "где",
    "там",
    "под",
    "можно",
    "ну",
    "какой",
    "после",
    "их",
    "работа",
    "без",
    "самый",
    "потом",
    "надо",
    "хотеть",
    "ли",
    "город",
    "вода",
    "дом",
    "мир",
    "всегда",
    "почему",
    "вопрос",
    "ответ",
];

const ZH: &[&str] = &[
    "我们", "可以", "这个", "一个", "没有", "什么", "他们", "因为", "所以", "但是", "如果", "已经",
    "自己", "知道", "时候", "现在", "问题", "工作", "学习", "数据", "模型", "方法", "系统", "需要",
    "使用", "进行", "发展", "社会", "经济", "技术", "研究", "重要", "情况", "提供", "服务", "生活",
    "城市", "世界", "国家", "时间", "机器", "学生", "老师", "朋友", "非常", "比较", "可能", "应该",
    "认为", "觉得", "开始", "结果", "影响", "能够", "的", "了", "是", "在", "和", "有", "也", "都",
    "就", "很", "更", "会", "要", "说",
];

const JA: &[&str] = &[
    "私",
    "は",
    "が",
    "を",
    "に",
    "で",
    "と",
    "の",
    "です",
    "ます",
    "これ",
    "それ",
    "あれ",
    "日本",
    "東京",
    "学生",
    "先生",
    "仕事",
    "時間",
    "今日",
    "明日",
    "昨日",
    "言葉",
    "勉強",
    "大学",
    "電車",
    "会社",
    "友達",
    "家族",
    "食べ物",
    "問題",
    "答え",
    "方法",
    "使う",
    "する",
    "ある",
    "いる",
    "なる",
    "できる",
    "思う",
    "言う",
    "見る",
    "行く",
    "来る",
    "とても",
    "少し",
    "たくさん",
    "新しい",
    "大きい",
    "小さい",
    "良い",
    "ください",
    "ありがとう",
    "データ",
    "モデル",
    "システム",
    "について",
    "ために",
    "ような",
    "こと",
    "もの",
];

const KO: &[&str] = &[
    "나는",
    "우리는",
    "그것은",
    "이것은",
    "학교",
    "회사",
    "친구",
    "가족",
    "시간",
    "오늘",
    "내일",
    "어제",
    "사람",
    "생각",
    "문제",
    "방법",
    "정말",
    "아주",
    "조금",
    "많이",
    "좋은",
    "새로운",
    "큰",
    "작은",
    "있습니다",
    "없습니다",
    "합니다",
    "했습니다",
    "그리고",
    "하지만",
    "그래서",
    "때문에",
    "위해",
    "대한",
    "데이터",
    "모델",
    "시스템",
    "공부",
    "일",
    "도시",
    "세계",
    "나라",
    "물",
    "집",
    "항상",
    "왜",
    "질문",
    "대답",
    "사용",
    "필요",
    "중요한",
];
