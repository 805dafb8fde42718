"""The keys Darknet reads in each cfg section, and a warning for the others (a typo in a hand-edited cfg).

Darknet (`parser.c`, pjreddie and AlexeyAB) reads each key it knows with `option_find*` and prints
"Unused field" for the rest; this engine reads only the keys that change inference and ignored all
others silently, so `activaton=leaky` or `strides=2` built another network without a word (and with
weights of the same size, ran). Keys in `DARKNET_KEYS` (training options, loss settings) stay silent.
"""
from __future__ import annotations

import difflib
import unicodedata
import warnings

from engine.errors import EngineWarning

# keys parse_network_cfg reads in every section
_EVERY = ("burnin_update clip dont_update dontload dontloadscales dontsave learning_rate numload onlyforward "
          "show_receptive_field smooth stopbackward train_only_bn truth")
_CONV = ("activation angle antialiasing assisted_excitation batch_normalize bin_output binary cbn coordconv dilation "
         "dot filters flipped grad_centr groups pad padding reverse rotate share_index size stream stretch "
         "stretch_sway stride stride_x stride_y sway wait_stream xnor")
_POOL = "antialiasing maxpool_depth maxpool_zero_nonmax out_channels padding size stride stride_x stride_y"
DARKNET_KEYS: dict[str, frozenset[str]] = {name: frozenset((keys + " " + _EVERY).split()) for name, keys in {
    "net": "B1 B2 adam adversarial_lr angle aspect attention augment_speed badlabels_rejection_percentage batch blur "
           "burn_in center channels clip contrastive contrastive_color contrastive_jit_flip cutmix decay "
           "dynamic_minibatch ema_alpha eps equidistant_point exposure flip gamma gaussian_noise height hue inputs "
           "label_smooth_eps learning_rate learning_rate_min letter_box loss_scale max_batches max_chart_loss "
           "max_crop max_ratio min_crop min_ratio mixup momentum mosaic mosaic_bound notruth "
           "num_sigmas_reject_badlabels optimized_memory policy power random resize_step saturation scale scales "
           "seq_scales sequential_subdivisions sgdr_cycle sgdr_mult step steps subdivisions time_steps track "
           "try_fix_nan unsupervised use_cuda_graph weights_reject_freq width workspace_size_limit_MB",
    "convolutional": _CONV,
    "connected": "activation batch_normalize output",
    "maxpool": _POOL,
    "avgpool": "",
    "dropout": "dropblock dropblock_size_abs dropblock_size_rel probability",
    "softmax": "groups noloss spatial temperature tree",
    "cost": "noobj ratio scale thresh type",
    "crop": "angle crop_height crop_width exposure flip noadjust saturation shift",
    "route": "group_id groups layers stream wait_stream",
    "shortcut": "activation alpha beta from weights_normalization weights_type",
    "upsample": "scale stride",
    "reorg": "extra flatten reverse stride",
    "reorg3d": "extra flatten reverse stride",
    "detection": "class_scale classes coord_scale coords forced jitter max noobject_scale num object_scale random "
                 "reorg rescore resize side softmax sqrt",
    "region": "absolute anchors background bias_match class_scale classes classfix coord_scale coords focal_loss "
              "jitter log map mask_scale max noobject_scale num object_scale random rescore resize softmax sqrt "
              "thresh tree",
    "yolo": "anchors beta_nms classes cls_normalizer counters_per_class delta_normalizer dets_for_show dets_for_track "
            "embedding_layer focal_loss ignore_thresh iou_loss iou_normalizer iou_thresh iou_thresh_kind jitter "
            "label_smooth_eps map mask max max_delta new_coords nms_kind num obj_normalizer objectness_smooth random "
            "resize scale_x_y show_details sim_thresh track_ciou_norm track_history_size truth_thresh",
}.items()}
MAX_WARNINGS = 5


def unknown_keys(cfg) -> list[tuple[object, str]]:
    """(section, key) of every key Darknet does not read in its section, in file order; sections this
    table does not know (the build refuses them) are skipped."""
    out = []
    for sec in [cfg.net, *cfg.layers]:
        known = DARKNET_KEYS.get(sec.name)
        if known is not None:
            out += [(sec, key) for key in sec.options if key not in known]
    return out


def warn_unknown_keys(cfg) -> None:
    """One EngineWarning per key Darknet would report as 'Unused field' (at most MAX_WARNINGS, then a count),
    naming file:line, the section and the closest key of that section (a typo?)."""
    found = unknown_keys(cfg)
    for sec, key in found[:MAX_WARNINGS]:
        close = difflib.get_close_matches(key, sorted(DARKNET_KEYS[sec.name]), n=1, cutoff=0.82)
        hint = f"; did you mean {close[0]}=?" if close else ""
        shown, note = _shown(key)
        warnings.warn(f"{sec.where(key)} {shown}={sec.raw(key)[:40]}{note}: not a key of [{sec.name}]; ignored "
                      f"(Darknet prints 'Unused field'){hint}", EngineWarning, stacklevel=3)
    if len(found) > MAX_WARNINGS:
        warnings.warn(f"{cfg.path}: {len(found) - MAX_WARNINGS} more keys that Darknet does not read in their "
                      "sections were ignored", EngineWarning, stacklevel=3)


def _shown(key: str) -> tuple[str, str]:
    """(the key, a note): as typed, or escaped with the culprit named when it holds a character that does not
    show: a no-break space copied from a web page makes `batch_normalize\xa0=1` look exactly like the real key."""
    short = key if len(key) <= 40 else key[:40] + "..."      # a 10 MB line is one key
    odd = next((ch for ch in short if not ch.isprintable()), None)
    if odd is None:
        return short, ""
    return ascii(short), f" (the key contains U+{ord(odd):04X} {unicodedata.name(odd, 'an unnamed character')})"
