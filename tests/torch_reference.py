"""PyTorch reference of the paper's encoder, written from the spec (docs/paper.md#frontend, docs/paper.md#encoder).

This is the correctness reference for the Keras port and its speed peer in benchmarks.
It needs only torch (no torchaudio): the frontend reproduces torchaudio's
``MelSpectrogram(n_fft=1024, f_max=11025, n_mels=128, normalized=True,
mel_scale="slaney")`` + ``AmplitudeToDB(top_db=100)``, and module/buffer names follow
the released checkpoints, so ``Backbone().state_dict()`` has their exact keys
(``spec.spec.spectrogram.window``, ``spec.spec.mel_scale.fb``, ``embedding.layer1.0...``).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


# --- frontend --------------------------------------------------------------------------

def slaney_hz_to_mel(freq):
    f_sp = 200.0 / 3
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, math.log(6.4) / 27.0
    freq = torch.as_tensor(freq, dtype=torch.float64)
    mels = freq / f_sp
    return torch.where(freq >= min_log_hz,
                       min_log_mel + torch.log(freq.clamp(min=1e-12) / min_log_hz) / logstep, mels)


def slaney_mel_to_hz(mels):
    f_sp = 200.0 / 3
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, math.log(6.4) / 27.0
    freqs = f_sp * mels
    return torch.where(mels >= min_log_mel, min_log_hz * torch.exp(logstep * (mels - min_log_mel)), freqs)


def torchaudio_mel_fbanks(n_freqs=513, f_min=0.0, f_max=11025.0, n_mels=128, sample_rate=16000):
    """torchaudio.functional.melscale_fbanks(..., norm=None, mel_scale="slaney"), float32."""
    all_freqs = torch.linspace(0, sample_rate // 2, n_freqs)
    m_pts = torch.linspace(float(slaney_hz_to_mel(f_min)), float(slaney_hz_to_mel(f_max)), n_mels + 2)
    f_pts = slaney_mel_to_hz(m_pts.double()).float()
    f_diff = f_pts[1:] - f_pts[:-1]
    slopes = f_pts.unsqueeze(0) - all_freqs.unsqueeze(1)  # (n_freqs, n_mels + 2)
    down = -slopes[:, :-2] / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    return torch.clamp(torch.minimum(down, up), min=0.0)  # (n_freqs, n_mels)


class _Spectrogram(nn.Module):
    def __init__(self, n_fft):
        super().__init__()
        self.n_fft = n_fft
        self.register_buffer("window", torch.hann_window(n_fft, periodic=True))

    def forward(self, x):  # (B, S) -> (B, freqs, frames) power, normalized="window"
        spec = torch.stft(x, self.n_fft, hop_length=self.n_fft // 2, window=self.window,
                          center=True, pad_mode="reflect", return_complex=True)
        spec = spec / self.window.pow(2).sum().sqrt()
        return spec.abs().pow(2)


class _MelScale(nn.Module):
    def __init__(self, fb):
        super().__init__()
        self.register_buffer("fb", fb)

    def forward(self, spec):  # (B, freqs, frames) -> (B, mels, frames)
        return torch.matmul(spec.transpose(-1, -2), self.fb).transpose(-1, -2)


class _MelSpectrogram(nn.Module):
    def __init__(self, n_fft=1024, n_mels=128, f_max=11025.0, sample_rate=16000):
        super().__init__()
        self.spectrogram = _Spectrogram(n_fft)
        self.mel_scale = _MelScale(torchaudio_mel_fbanks(n_fft // 2 + 1, 0.0, f_max, n_mels, sample_rate))

    def forward(self, x):
        return self.mel_scale(self.spectrogram(x))


class SpecModule(nn.Module):
    """(B, samples, 1) -> (B, 1, mel, time) in dB, top_db applied per example."""

    def __init__(self, top_db=100.0, amin=1e-10):
        super().__init__()
        self.spec = _MelSpectrogram()
        self.top_db, self.amin = top_db, amin

    def forward(self, x):
        x = x.permute(0, 2, 1)  # (B, C, S)
        b, c, s = x.shape
        mel = self.spec(x.reshape(b * c, s))
        mel = mel.reshape(b, c, *mel.shape[1:])
        db = 10.0 * torch.log10(torch.clamp(mel, min=self.amin))
        peak = db.amax(dim=(1, 2, 3), keepdim=True)
        return torch.maximum(db, peak - self.top_db)


# --- backbone --------------------------------------------------------------------------

class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = None
        if stride > 1 or inplanes != planes * 4:
            self.downsample = nn.Sequential()
            self.downsample.add_module("-1", nn.AvgPool2d(stride))
            self.downsample.add_module("0", nn.Conv2d(inplanes, planes * 4, 1, bias=False))
            self.downsample.add_module("1", nn.BatchNorm2d(planes * 4))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.avgpool(out)))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class AttentionPool2d(nn.Module):
    def __init__(self, tokens, embed_dim, num_heads, output_dim):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(tokens, embed_dim) / embed_dim ** 0.5)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.c_proj = nn.Linear(embed_dim, output_dim)
        self.num_heads = num_heads

    def forward(self, x):  # (N, C, H, W) -> (N, output_dim)
        x = x.flatten(2).permute(2, 0, 1)  # (HW, N, C)
        x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0)
        x = x + self.positional_embedding[:, None, :]
        x, _ = F.multi_head_attention_forward(
            query=x, key=x, value=x, embed_dim_to_check=x.shape[-1], num_heads=self.num_heads,
            q_proj_weight=self.q_proj.weight, k_proj_weight=self.k_proj.weight,
            v_proj_weight=self.v_proj.weight, in_proj_weight=None,
            in_proj_bias=torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias]),
            bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0,
            out_proj_weight=self.c_proj.weight, out_proj_bias=self.c_proj.bias,
            use_separate_proj_weight=True, training=self.training, need_weights=False,
        )
        return x[0]


class ModifiedResNet(nn.Module):
    def __init__(self, width=16, layers=(3, 4, 6, 3), heads=8, output_dim=1024, n_mels=128, n_frames=126):
        super().__init__()
        self.conv1 = nn.Conv2d(1, width // 2, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.conv2 = nn.Conv2d(width // 2, width // 2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.conv3 = nn.Conv2d(width // 2, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.avgpool = nn.AvgPool2d(2)
        inplanes = width
        stages = []
        for i, blocks in enumerate(layers):
            planes = width * 2 ** i
            stage = [Bottleneck(inplanes, planes, 1 if i == 0 else 2)]
            inplanes = planes * 4
            stage += [Bottleneck(inplanes, planes) for _ in range(1, blocks)]
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.attnpool = AttentionPool2d((n_mels // 32) * (n_frames // 32) + 1, width * 32, heads, output_dim)

    def forward(self, x):
        for conv, bn in ((self.conv1, self.bn1), (self.conv2, self.bn2), (self.conv3, self.bn3)):
            x = F.relu(bn(conv(x)))
        x = self.avgpool(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.attnpool(x)


class Backbone(nn.Module):
    """waveform (B, 64000, 1) -> (B, output_dim); state_dict keys as the released checkpoints."""

    def __init__(self, width=16, layers=(3, 4, 6, 3), heads=8, output_dim=1024):
        super().__init__()
        self.spec = SpecModule()
        self.embedding = ModifiedResNet(width, layers, heads, output_dim)

    def forward(self, x):
        return self.embedding(self.spec(x))


def randomize_batchnorm(model, seed=0):
    """Give every BatchNorm non-trivial affine params and running stats (eval-mode parity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(1.0 + 0.2 * torch.randn(n, generator=g))
                m.bias.copy_(0.1 * torch.randn(n, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))
    return model
