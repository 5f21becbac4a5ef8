"""Procedural sentences: small per-language word lists (our own) and sentence templates.

The sentences need not mean much; they need the sound patterns of their language so that the phoneme
timelines (and the mouth shapes they drive) vary like real speech. A template is a string of slot letters:
S subject, V verb, D determiner, A adjective, N noun, P preposition, C connective, X a particle. Every word was
checked to be read by espeak-ng in its own language (no switch to English; see tests/test_synth.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Lexicon:
    """Word lists and sentence templates of one language."""

    words: dict[str, tuple[str, ...]]  # slot letter -> words
    templates: tuple[str, ...]  # slot letters separated by spaces; "?" or "." at the end sets the punctuation
    separator: str = " "  # between words ("" for languages written without spaces)
    capitalize: bool = True


def _w(text: str) -> tuple[str, ...]:
    return tuple(text.split())


_EN = Lexicon(
    words={
        "S": _w("I you we they she he everyone nobody"),
        "V": _w("see want find bring need remember paint follow carry visit open watch build choose"),
        "D": _w("the a this that every my your our their some"),
        "A": _w("quiet yellow bright little ancient gentle heavy purple curious simple hidden silver warm lucky"),
        "N": _w(
            "garden window river machine story mountain teacher letter bottle morning kitchen forest "
            "bridge mirror pocket village summer picture engine island"
        ),
        "P": _w("near behind under over beside across inside without"),
        "C": _w("maybe today later still often soon perhaps again"),
    },
    templates=(
        "S V D A N .",
        "D A N V D N .",
        "C S V D N P D N .",
        "S V D N P D A N .",
        "C D N V D A N .",
        "S V D N ?",
        "D N P D N V D A N .",
    ),
)

LEXICONS: dict[str, Lexicon] = {
    "en-us": _EN,
    "en": _EN,
    "de": Lexicon(
        words={
            "S": _w("ich du wir sie er jeder niemand"),
            "V": _w("sehe finde bringe suche male trage baue öffne kenne brauche wähle besuche"),
            "D": _w("den einen diesen jeden meinen deinen unseren"),
            "A": _w("ruhigen gelben hellen kleinen alten sanften schweren bunten neuen warmen stillen"),
            "N": _w("Garten Fluss Brief Morgen Wald Spiegel Turm Wagen Berg Tisch Vogel Schlüssel Hafen Sommer"),
            "P": _w("neben hinter unter über vor zwischen"),
            "C": _w("heute vielleicht später trotzdem morgen oft bald wieder"),
        },
        templates=(
            "S V D A N .",
            "C V S D N .",
            "S V D N P D N .",
            "C V S D A N P D N .",
            "S V D N ?",
        ),
    ),
    "fr": Lexicon(
        words={
            "S": _w("je tu nous ils elle il personne"),
            "V": _w("vois cherche trouve porte garde ouvre choisis regarde construis connais"),
            "D": _w("le un ce chaque mon ton notre leur"),
            "A": _w("petit grand vieux beau joli nouveau long gros"),
            "N": _w("jardin livre chemin miroir village bateau matin château nuage oiseau pont manteau"),
            "P": _w("sous sur devant derrière près dans"),
            "C": _w("peut-être aujourd'hui souvent encore bientôt demain toujours"),
        },
        templates=(
            "S V D A N .",
            "C S V D N .",
            "S V D N P D N .",
            "C S V D A N P D N .",
            "S V D N ?",
        ),
    ),
    "es": Lexicon(
        words={
            "S": _w("yo tú nosotros ellos ella él nadie"),
            "V": _w("veo busco encuentro llevo guardo abro elijo miro construyo conozco pinto"),
            "D": _w("el un este cada mi tu nuestro su"),
            "A": _w("pequeño viejo nuevo largo blanco rojo tranquilo antiguo dorado"),
            "N": _w("jardín libro camino espejo pueblo barco río castillo pájaro puente abrigo mercado"),
            "P": _w("bajo sobre detrás cerca dentro junto"),
            "C": _w("quizás hoy mañana siempre pronto luego todavía"),
        },
        templates=(
            "S V D N A .",
            "C S V D N .",
            "S V D N P D N .",
            "C S V D N A P D N .",
            "S V D N ?",
        ),
    ),
    "it": Lexicon(
        words={
            "S": _w("io tu noi loro lei lui nessuno"),
            "V": _w("vedo cerco trovo porto guardo apro scelgo costruisco conosco dipingo"),
            "D": _w("il un questo ogni mio tuo nostro"),
            "A": _w("piccolo vecchio nuovo lungo bianco rosso tranquillo antico dorato"),
            "N": _w("giardino libro sentiero specchio paese battello fiume castello uccello ponte cappotto mercato"),
            "P": _w("sotto sopra dietro vicino dentro accanto"),
            "C": _w("forse oggi domani sempre presto poi ancora"),
        },
        templates=(
            "S V D N A .",
            "C S V D N .",
            "S V D N P D N .",
            "C S V D N A P D N .",
            "S V D N ?",
        ),
    ),
    "pt-br": Lexicon(
        words={
            "S": _w("eu você nós eles ela ele ninguém"),
            "V": _w("vejo procuro encontro levo guardo abro escolho olho construo conheço pinto"),
            "D": _w("o um este cada meu teu nosso seu"),
            "A": _w("pequeno velho novo longo branco vermelho tranquilo antigo dourado"),
            "N": _w("jardim livro caminho espelho vilarejo barco rio castelo pássaro ponte casaco mercado"),
            "P": _w("sob sobre atrás perto dentro junto"),
            "C": _w("talvez hoje amanhã sempre logo depois ainda"),
        },
        templates=(
            "S V D N A .",
            "C S V D N .",
            "S V D N P D N .",
            "C S V D N A P D N .",
            "S V D N ?",
        ),
    ),
    "nl": Lexicon(
        words={
            "S": _w("ik jij wij zij hij iedereen niemand"),
            "V": _w("zie zoek vind breng draag bouw open ken kies schilder bezoek"),
            "D": _w("de een deze elke mijn jouw onze hun"),
            "A": _w("rustige gele heldere kleine oude zachte zware nieuwe warme stille"),
            "N": _w("tuin rivier brief morgen bos spiegel toren wagen berg tafel vogel sleutel haven zomer"),
            "P": _w("naast achter onder boven voor tussen"),
            "C": _w("vandaag misschien later toch morgen vaak binnenkort weer"),
        },
        templates=(
            "S V D A N .",
            "C V S D N .",
            "S V D N P D N .",
            "C V S D A N P D N .",
            "S V D N ?",
        ),
    ),
    "pl": Lexicon(
        words={
            "S": _w("ja ty my oni ona on nikt"),
            "V": _w("widzę szukam znajduję niosę otwieram wybieram buduję znam maluję odwiedzam"),
            "D": _w("ten każdy mój twój nasz ich"),
            "A": _w("cichy żółty jasny mały stary ciepły ciężki nowy zielony spokojny"),
            "N": _w("ogród list poranek las lustro zamek wóz stół ptak klucz port most obraz"),
            "P": _w("obok za pod nad przed między"),
            "C": _w("dzisiaj może później jednak jutro często wkrótce znowu"),
        },
        templates=(
            "S V D A N .",
            "C S V D N .",
            "S V D N P D N .",
            "C S V D A N P D N .",
            "S V D N ?",
        ),
    ),
    # Mandarin: syllables (characters) that this espeak-ng build reads in Mandarin; the Debian cmn dictionary
    # lacks many common characters and spells them in English, so the list sticks to the ones it knows.
    "cmn": Lexicon(
        words={
            "S": _w("我 谁 众"),
            "V": _w("是 说 用 受 知 使 吃 找 指 收 照 称 争 唱 追 守 授 招 烧 睡 试 忘 遇"),
            "D": _w("之"),
            "A": _w("长 重 少 直 实 正 常 微 永 湿"),
            "N": _w("中 上 时 事 世 水 手 儿 月 十 王 石 城 史 诗 钟 室 鱼 床 舞 午 窗 桌 耳 雨 州 屋 纸 食"),
            "P": _w("于 至 往 朝 与"),
            "C": _w("而 只 至"),
        },
        templates=("S V A N 。", "S V D N 。", "C S V N P N 。", "N V A N 。", "S V N P N ？"),
        separator="",
        capitalize=False,
    ),
    # Japanese: kana only (this espeak-ng build reads kanji in English).
    "ja": Lexicon(
        words={
            "S": _w("わたし あなた かれ かのじょ みんな だれか"),
            "N": _w("さかな やま かわ まど ほん そら はな くるま いえ とり もり うみ みち ねこ いぬ"),
            "A": _w("あおい あかい ちいさい おおきい しずかな あたらしい ふるい きれいな"),
            "V": _w("みます よみます かきます つくります まちます あるきます たべます さがします"),
            "X": _w("は が を に で と"),
            "P": _w("の"),
            "C": _w("きょう あした いつも ときどき たぶん また"),
        },
        templates=("S X A N X V 。", "C S X N X V 。", "N P N X A N X V 。", "S X N X V か 。"),
        separator="",
        capitalize=False,
    ),
}
# Template letters that are literal text (punctuation, particles written in the template).
_SLOTS = set("SVDANPCX")


def make_sentence(language: str, rng: np.random.Generator) -> str:
    """One random sentence in `language` (a key of LEXICONS)."""
    lex = LEXICONS[language]
    template = lex.templates[rng.integers(len(lex.templates))].split()
    tokens = [lex.words[t][rng.integers(len(lex.words[t]))] if t in _SLOTS else t for t in template]
    *body, end = tokens
    text = lex.separator.join(body)
    if lex.capitalize:
        text = text[:1].upper() + text[1:]
    return text + end


__all__ = ["LEXICONS", "Lexicon", "make_sentence"]
