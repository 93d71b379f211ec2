"""Rewards on Step-Audio 2's spoken replies (rewards/audio_output.py), offline on tiny stand-ins.

The whole path runs on real parts: the tone vocoder turns codes into audio, a tiny random Whisper
(built here from a config, saved and loaded back by path) transcribes it, and the reward must equal
exp(-2.5 * CER) of what that model transcribes. Speaker and emotion hooks are stand-ins defined
below and named by this file's path, as a user names theirs.
"""

from __future__ import annotations

import doctest
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
from audiorl.common.errors import ConfigError, RewardError, collect_missing_inputs
from audiorl.data.audio import resample, save_audio
from audiorl.rewards import REWARDS, RewardSet, audio_output
from audiorl.rewards.asr import error_rate
from audiorl.rewards.audio_output import SpeakerSimilarity, SpeechASRError, SpeechEmotion, tone_vocoder
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

TONE = "audiorl.rewards.audio_output:tone_vocoder"
HERE = __file__
EMOTIONS = ["angry", "happy", "neutral"]
LOW, HIGH = [1, 3, 5, 7, 9, 11, 13, 15], [41, 43, 45, 47, 49, 51, 53, 55]  # two "voices": low and high tones


# ------------------------------------------------------------------ stand-in hooks (named by file path)
def mean_spectrum(wave, sample_rate):
    """A stand-in speaker embedding: the mean log magnitude spectrum over 32 ms frames."""
    frame = int(0.032 * sample_rate)
    frames = wave[: len(wave) // frame * frame].reshape(-1, frame)
    return np.log1p(np.abs(np.fft.rfft(frames * np.hanning(frame), axis=1))).mean(axis=0)


def pitch_emotion(wave, sample_rate):
    """A stand-in emotion classifier: high tones are 'happy', low ones 'neutral'."""
    spectrum = np.abs(np.fft.rfft(wave))
    peak_hz = np.argmax(spectrum) * sample_rate / len(wave)
    p_happy = float(1 / (1 + math.exp(-(peak_hz - 300) / 50)))
    return {"Happy": p_happy, "Neutral": 1 - p_happy}


def top_label_emotion(wave, sample_rate):
    result = pitch_emotion(wave, sample_rate)
    return max(result, key=result.get)


def list_vocoder(codes):
    return [0.0] * len(codes)  # not (waveform, sample_rate)


def nan_vocoder(codes):
    return np.full(960 * len(codes), np.nan, dtype=np.float32), 24_000


def tensor_like_vocoder(codes):
    return [0.1] * 960, 24_000  # a list, not an array


def bad_probability(wave, sample_rate):
    return {"happy": 1.7}


# ------------------------------------------------------------------ tiny checkpoints
def _whisper_tokenizer():
    """A Whisper tokenizer on model/tiny.py's offline BPE, with Whisper's special tokens."""
    from audiorl.model.tiny import build_tokenizer
    from transformers import WhisperTokenizer

    bpe = json.loads(build_tokenizer(512).backend_tokenizer.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in bpe["merges"]]
    tokenizer = WhisperTokenizer(vocab=bpe["vocab"], merges=merges, unk_token="<|endoftext|>")
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|startoftranscript|>", "<|notimestamps|>"]})
    return tokenizer


def _whisper_config(tokenizer, **extra):
    from transformers import WhisperConfig

    eos, start = tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|startoftranscript|>"])
    return WhisperConfig(
        vocab_size=-(-len(tokenizer) // 64) * 64, num_mel_bins=80, d_model=64, encoder_layers=1, decoder_layers=1,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=128, decoder_ffn_dim=128,
        max_source_positions=1500, max_target_positions=64, pad_token_id=eos, bos_token_id=eos, eos_token_id=eos,
        decoder_start_token_id=start, begin_suppress_tokens=None, suppress_tokens=None,
        init_std=0.5,  # a random model that reads its input: different audio, different transcripts
        **extra,
    )


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A tiny random Whisper ASR and a tiny Whisper emotion classifier, saved as local checkpoints."""
    import torch
    from transformers import (
        GenerationConfig,
        WhisperFeatureExtractor,
        WhisperForAudioClassification,
        WhisperForConditionalGeneration,
        WhisperProcessor,
    )

    root = tmp_path_factory.mktemp("audio_rewards")
    tokenizer = _whisper_tokenizer()
    features = WhisperFeatureExtractor(feature_size=80)
    torch.manual_seed(0)
    config = _whisper_config(tokenizer)
    asr = WhisperForConditionalGeneration(config)
    asr.generation_config = GenerationConfig(
        decoder_start_token_id=config.decoder_start_token_id, eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id, max_length=64,
    )
    asr.save_pretrained(root / "asr")
    WhisperProcessor(feature_extractor=features, tokenizer=tokenizer).save_pretrained(root / "asr")
    emotion_config = _whisper_config(tokenizer, id2label=dict(enumerate(EMOTIONS)), label2id={e: i for i, e in enumerate(EMOTIONS)})
    WhisperForAudioClassification(emotion_config).save_pretrained(root / "emotion")
    features.save_pretrained(root / "emotion")
    _save_tiny_ctc(str(root / "ctc"))
    return SimpleNamespace(asr=str(root / "asr"), emotion=str(root / "emotion"), ctc=str(root / "ctc"))


def _save_tiny_ctc(path):
    """A tiny random wav2vec2 CTC model with a character vocabulary (the other ASR family)."""
    import os

    from transformers import Wav2Vec2Config, Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC

    os.makedirs(path)
    vocab = {"<pad>": 0, "|": 1, **{c: i + 2 for i, c in enumerate("abcdefghijklmnopqrstuvwxyz'")}}
    with open(os.path.join(path, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    Wav2Vec2CTCTokenizer(os.path.join(path, "vocab.json"), unk_token="<pad>").save_pretrained(path)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16_000, return_attention_mask=True).save_pretrained(path)
    config = Wav2Vec2Config(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        conv_dim=(32, 32), conv_kernel=(10, 3), conv_stride=(5, 2), num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2, feat_extract_norm="layer", pad_token_id=0, initializer_range=0.5,
    )
    Wav2Vec2ForCTC(config).save_pretrained(path)


@pytest.fixture(autouse=True)
def fresh_caches():
    audio_output.clear_caches()
    yield
    audio_output.clear_caches()


def transcripts_of(asr_path, code_lists, max_new_tokens=16):
    """What the checkpoint hears in the tone vocoder's audio, computed here without the reward."""
    import torch
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    model = WhisperForConditionalGeneration.from_pretrained(asr_path).eval()
    processor = WhisperProcessor.from_pretrained(asr_path)
    waves = [resample(*tone_vocoder(codes), 16_000) for codes in code_lists]
    inputs = processor(waves, sampling_rate=16_000, return_tensors="pt")
    with torch.inference_mode():
        ids = model.generate(inputs.input_features, max_new_tokens=max_new_tokens, do_sample=False)
    return [t.strip() for t in processor.batch_decode(ids, skip_special_tokens=True)]


# ------------------------------------------------------------------ basics
def test_docstring_examples_and_registration():
    assert doctest.testmod(audio_output).failed == 0
    assert REWARDS.get("speech_asr_error") is SpeechASRError
    assert REWARDS.get("speaker_similarity") is SpeakerSimilarity
    assert REWARDS.get("speech_emotion") is SpeechEmotion


def test_tone_vocoder_is_25_hz_and_code_dependent():
    wave, sr = tone_vocoder(list(range(50)))
    assert (sr, wave.dtype, wave.shape) == (24_000, np.float32, (48_000,))  # 50 codes = 2 s
    assert not np.allclose(tone_vocoder([1])[0], tone_vocoder([2])[0])


# ------------------------------------------------------------------ speech_asr_error
def test_asr_reward_is_exp_of_the_cer_of_what_the_model_transcribes(checkpoints):
    codes = [LOW, HIGH, [200, 300, 400] * 4]
    heard = transcripts_of(checkpoints.asr, codes)
    assert all(heard) and len(set(heard)) > 1, heard  # the tiny model writes text, and it depends on the audio
    answers = [heard[0], "a different sentence", heard[1] + " and more"]
    reward = SpeechASRError(asr_model=checkpoints.asr, vocoder=TONE, max_new_tokens=16)
    values = reward(completions=["c0", "c1", "c2"], audio_codes=codes, answers=answers, thinks=[None] * 3)
    expected = [math.exp(-2.5 * error_rate(a, h, metric="cer")) for a, h in zip(answers, heard)]
    assert values == pytest.approx(expected, abs=1e-12)
    assert values[0] == 1.0 and values[1] < 1.0 and values[2] < 1.0

    linear = SpeechASRError(asr_model=checkpoints.asr, vocoder=TONE, max_new_tokens=16, value="linear", metric="wer", k=1.0)
    got = linear(completions=["c0", "c1", "c2"], audio_codes=codes, answers=answers)
    assert got == pytest.approx([max(0.0, 1 - error_rate(a, h, metric="wer")) for a, h in zip(answers, heard)])


def test_asr_reward_reference_column_and_text_only_replies(checkpoints):
    codes = [LOW, [], None]
    heard = transcripts_of(checkpoints.asr, [LOW])[0]
    reward = SpeechASRError(asr_model=checkpoints.asr, vocoder=TONE, max_new_tokens=16, reference_column="transcript")
    values = reward(["c0", "c1", "c2"], audio_codes=codes, answers=["not this"] * 3, transcript=[heard, "x", "y"])
    assert values == [1.0, None, None]  # scored against the column; no codes: not applicable
    zero = SpeechASRError(asr_model=checkpoints.asr, vocoder=TONE, max_new_tokens=16, no_audio="zero")
    assert zero(["c0", "c1"], audio_codes=[[], []], answers=["a", "b"]) == [0.0, 0.0]
    assert reward([], audio_codes=[], transcript=[]) == []


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    answers=st.lists(st.text(max_size=60), min_size=1, max_size=3),
    codes=st.lists(st.lists(st.integers(0, 6560), max_size=30), min_size=3, max_size=3),
)
def test_asr_reward_stays_in_range_on_any_text_and_codes(checkpoints, answers, codes):
    reward = SpeechASRError(asr_model=checkpoints.asr, vocoder=TONE, max_new_tokens=8)
    codes = codes[: len(answers)]
    for value, row in zip(reward(["c"] * len(answers), audio_codes=codes, answers=answers), codes):
        assert (value is None) == (not row)
        assert value is None or 0.0 < value <= 1.0


def test_asr_reward_with_a_ctc_model(checkpoints):
    import torch
    from transformers import AutoFeatureExtractor, AutoTokenizer, Wav2Vec2ForCTC

    model = Wav2Vec2ForCTC.from_pretrained(checkpoints.ctc).eval()
    features, tokenizer = AutoFeatureExtractor.from_pretrained(checkpoints.ctc), AutoTokenizer.from_pretrained(checkpoints.ctc)
    heard = []
    for codes in (LOW, HIGH):  # one at a time: the reward's batch must not change a clip's transcript
        inputs = features(resample(*tone_vocoder(codes), 16_000), sampling_rate=16_000, return_tensors="pt")
        with torch.inference_mode():
            heard.append(tokenizer.decode(model(**inputs).logits.argmax(-1)[0], skip_special_tokens=True).strip())
    assert all(heard), heard
    reward = SpeechASRError(asr_model=checkpoints.ctc, vocoder=TONE, metric="wer", k=0.5)
    values = reward(["c0", "c1"], audio_codes=[LOW, HIGH], answers=[heard[0], "the cat"])
    assert values == pytest.approx([1.0, math.exp(-0.5 * error_rate("the cat", heard[1], metric="wer"))])


def test_asr_reward_through_a_reward_set(checkpoints):
    spec = SimpleNamespace(name="speech_asr_error", weight=1.0, kwargs={"asr_model": checkpoints.asr, "vocoder": TONE, "max_new_tokens": 16})
    rewards = RewardSet([spec])
    heard = transcripts_of(checkpoints.asr, [HIGH])[0]
    # the RL core hands a completion's parts over: its answer text (here the words the ASR model hears) and its codes
    scores = rewards.score([f"<think>plan</think>{heard}", "text only"], audio_codes=[HIGH, []])
    assert scores.values[0, 0] == 1.0 and math.isnan(scores.values[1, 0])


def test_validate_lists_a_missing_checkpoint_without_failing():
    with collect_missing_inputs() as notes:  # `audiorl validate` on a machine without the checkpoints
        SpeechASRError.check_kwargs(asr_model="/cluster/whisper", vocoder="/cluster/voc.py:token2wav")
    assert len(notes) == 2 and "asr_model: '/cluster/whisper'" in notes[0] and "file '/cluster/voc.py'" in notes[1]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"asr_model": "/nonexistent/whisper"}, "asr_model: '/nonexistent/whisper' is not a Hugging Face checkpoint"),
        ({"asr_model": None}, "asr_model needs the path of a local speech recognition"),
        ({"vocoder": None}, "needs kwargs.vocoder"),
        ({"vocoder": "tone_vocoder"}, "vocoder: 'tone_vocoder' is not of the form"),
        ({"vocoder": "missing/voc.py:fn"}, "vocoder: file 'missing/voc.py' does not exist"),
        ({"metric": "ber"}, "metric must be one of"),
        ({"value": "log"}, "value must be one of exp, linear"),
        ({"k": -1}, "k must be a positive number"),
        ({"no_audio": "skip"}, "no_audio must be one of none, zero"),
        ({"dtype": "int8"}, "dtype must be one of"),
        ({"generate_kwargs": "en"}, "generate_kwargs must be a mapping"),
    ],
)
def test_asr_reward_refuses_bad_options_before_loading(checkpoints, kwargs, message):
    options = {"asr_model": checkpoints.asr, "vocoder": TONE, **kwargs}
    with pytest.raises(ConfigError, match="reward 'speech_asr_error'") as err:
        RewardSet([SimpleNamespace(name="speech_asr_error", weight=1.0, kwargs=options)])
    assert message in str(err.value)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        SpeechASRError(**options)


@pytest.mark.parametrize(
    "vocoder, message",
    [
        (f"{HERE}:list_vocoder", "returned list; it must return (waveform, sample_rate)"),
        (f"{HERE}:tensor_like_vocoder", "returned a list waveform; it must be a numpy array"),
        (f"{HERE}:nan_vocoder", "returned a waveform with NaN or infinite samples"),
        ("audiorl.rewards.audio_output:no_such_vocoder", "could not be imported"),
    ],
)
def test_a_bad_vocoder_is_named(checkpoints, vocoder, message):
    reward = SpeechASRError(asr_model=checkpoints.asr, vocoder=vocoder)
    with pytest.raises((RewardError, ConfigError), match="reward 'speech_asr_error'") as err:
        reward(["c"], audio_codes=[LOW], answers=["a"])
    assert message in str(err.value) and vocoder in str(err.value)


def test_bad_codes_and_columns_are_named(checkpoints):
    reward = SpeechASRError(asr_model=checkpoints.asr, vocoder=TONE, reference_column="transcript")
    with pytest.raises(RewardError, match="reference_column 'transcript' is not a column of the batch"):
        reward(["c"], audio_codes=[LOW], answers=["a"])
    with pytest.raises(RewardError, match="sample 0 has speech code 6561 outside 0..6560"):
        reward(["c"], audio_codes=[[1, 6561]], transcript=["a"])
    with pytest.raises(RewardError, match="1 code lists in audio_codes for 2 completions"):
        reward(["c", "d"], audio_codes=[LOW], transcript=["a", "b"])
    classifier = SpeechASRError(asr_model=checkpoints.emotion, vocoder=TONE)
    with pytest.raises(ConfigError, match="asr_model '.*emotion' is a WhisperForAudioClassification checkpoint, not a"):
        classifier(["c"], audio_codes=[LOW], answers=["a"])
    with pytest.raises(ConfigError, match="device: 'gpu' is not a device"):
        SpeechASRError(asr_model=checkpoints.asr, vocoder=TONE, device="gpu")(["c"], audio_codes=[LOW], answers=["a"])


# ------------------------------------------------------------------ speaker_similarity
def test_speaker_similarity_prefers_the_same_voice(tmp_path):
    low_wav, high_wav = str(tmp_path / "low.wav"), str(tmp_path / "high.wav")
    save_audio(low_wav, *tone_vocoder([c + 2 for c in LOW] * 3))  # the same voice, other words
    save_audio(high_wav, *tone_vocoder([c + 2 for c in HIGH] * 3))
    reward = SpeakerSimilarity(embedder=f"{HERE}:mean_spectrum", vocoder=TONE, reference_column="speaker_wav")
    values = reward(
        ["c"] * 5, audio_codes=[LOW, LOW, HIGH, HIGH, []],
        speaker_wav=[low_wav, high_wav, high_wav, low_wav, low_wav],
    )
    assert values[0] > values[1] and values[2] > values[3] and values[4] is None
    assert all(-1.0 <= v <= 1.0 for v in values[:4])
    fixed = SpeakerSimilarity(embedder=f"{HERE}:mean_spectrum", vocoder=TONE, reference_wav=low_wav, no_audio="zero")
    assert fixed(["c"] * 3, audio_codes=[LOW, HIGH, []]) == pytest.approx([values[0], values[3], 0.0])


def test_speaker_similarity_options_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="exactly one of kwargs.reference_wav"):
        SpeakerSimilarity(embedder=f"{HERE}:mean_spectrum", vocoder=TONE)
    with pytest.raises(ConfigError, match="reference_wav '/no/such.wav' does not exist"):
        SpeakerSimilarity(embedder=f"{HERE}:mean_spectrum", vocoder=TONE, reference_wav="/no/such.wav")
    with pytest.raises(ConfigError, match="needs kwargs.embedder"):
        SpeakerSimilarity(vocoder=TONE, reference_column="speaker_wav")
    reward = SpeakerSimilarity(embedder=f"{HERE}:list_vocoder", vocoder=TONE, reference_column="speaker_wav")
    with pytest.raises(RewardError, match="embedder '.*list_vocoder' on sample 0 raised TypeError"):
        reward(["c"], audio_codes=[LOW], speaker_wav=["x.wav"])


# ------------------------------------------------------------------ speech_emotion
def test_speech_emotion_from_a_function_classifier():
    reward = SpeechEmotion(classifier=f"{HERE}:pitch_emotion", vocoder=TONE, target_column="emotion")
    values = reward(["c"] * 3, audio_codes=[HIGH, LOW, []], emotion=["happy", "happy", "neutral"])
    assert values[0] > 0.5 > values[1] and values[2] is None
    wave = resample(*tone_vocoder(HIGH), 16_000)
    assert values[0] == pytest.approx(pitch_emotion(wave, 16_000)["Happy"])
    indicator = SpeechEmotion(classifier=f"{HERE}:pitch_emotion", vocoder=TONE, target="Neutral", value="indicator")
    assert indicator(["c"] * 2, audio_codes=[HIGH, LOW]) == [0.0, 1.0]
    label = SpeechEmotion(classifier=f"{HERE}:top_label_emotion", vocoder=TONE, target="happy")
    assert label(["c"] * 2, audio_codes=[HIGH, LOW]) == [1.0, 0.0]
    bad = SpeechEmotion(classifier=f"{HERE}:bad_probability", vocoder=TONE, target="happy")
    with pytest.raises(RewardError, match="returned probability 1.7 for label 'happy'; it must lie in"):
        bad(["c"], audio_codes=[HIGH])


def test_speech_emotion_from_a_checkpoint(checkpoints):
    import torch
    from transformers import AutoFeatureExtractor, WhisperForAudioClassification

    reward = SpeechEmotion(classifier=checkpoints.emotion, vocoder=TONE, target_column="emotion")
    values = reward(["c"] * 3, audio_codes=[HIGH, LOW, LOW], emotion=["Happy", "angry", "neutral"])
    model = WhisperForAudioClassification.from_pretrained(checkpoints.emotion).eval()
    features = AutoFeatureExtractor.from_pretrained(checkpoints.emotion)
    waves = [resample(*tone_vocoder(c), 16_000) for c in (HIGH, LOW, LOW)]
    with torch.inference_mode():
        probs = model(**features(waves, sampling_rate=16_000, return_tensors="pt")).logits.softmax(-1)
    assert values == pytest.approx([probs[0, 1].item(), probs[1, 0].item(), probs[2, 2].item()], abs=1e-6)
    unknown = SpeechEmotion(classifier=checkpoints.emotion, vocoder=TONE, target="sarcastic")
    with pytest.raises(RewardError, match="target emotion 'sarcastic' \\(target\\) is not a label .* angry, happy, neutral"):
        unknown(["c"], audio_codes=[LOW])
    with pytest.raises(ConfigError, match="classifier: '/no/emotion_model' is not a Hugging Face checkpoint"):
        SpeechEmotion(classifier="/no/emotion_model", vocoder=TONE, target="happy")
    with pytest.raises(ConfigError, match="exactly one of kwargs.target"):
        SpeechEmotion(classifier=checkpoints.emotion, vocoder=TONE, target="happy", target_column="emotion")
