"""SynthTalk: a procedural talking-face dataset with known lip motion (`rest synth`).

Faces are drawn procedurally (render.py), speak sentences from small per-language word lists (text.py) through
espeak-ng (speech.py), whose phoneme timings drive the mouth via visemes with coarticulation (visemes.py); heads
sway and eyes blink (motion.py). generate.py plans the clips, the splits and writes the shards; preview.py
draws contact sheets and speech strips for checking by eye.
"""
