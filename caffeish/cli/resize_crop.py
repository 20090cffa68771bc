"""``caffeish resize-and-crop``: Caffe's ``tools/extra/resize_and_crop_images.py``: every image of a folder (or
of a list) resized so that its shorter side is ``--output-side-length``, its centre square cropped out and
written to an output folder under the same relative path.
"""
import logging
import os

import click
import numpy
from PIL import Image

from .. import io as cio
from ..atomic import atomic_path
from ..errors import CaffeishError
from ..imgproc import resize_linear
from ..io import IMAGE_EXTENSIONS
from . import register_command

log = logging.getLogger("caffeish")

LOG_EVERY = 1000


def resized_shape(height, width, side):
    """(new height, new width): the shorter side becomes ``side``, the other in proportion (rounded down)."""
    if height > width:
        return side * height // width, side
    return side, side * width // height


def resize_and_crop(img, side):
    """An H x W x C uint8 image resized (shorter side ``side``) and centre-cropped to side x side."""
    height, width = img.shape[:2]
    new_height, new_width = resized_shape(height, width, side)
    if (new_height, new_width) != (height, width):
        img = resize_linear(img, new_height, new_width)
    top, left = (new_height - side) // 2, (new_width - side) // 2
    return numpy.ascontiguousarray(img[top:top + side, left:left + side])


def _format(path):
    ext = os.path.splitext(path)[1].lower()
    fmt = Image.registered_extensions().get(ext)
    if fmt is None:
        raise CaffeishError(f"cannot tell the image format to write from the extension '{ext}'", path=path)
    return fmt


def _relative(name, input_folder, where):
    """An image's path relative to the input folder (absolute paths inside it allowed, as the script did)."""
    path = os.path.normpath(os.path.join(input_folder, name))
    rel = os.path.relpath(path, input_folder)
    if rel == os.curdir or rel.startswith(os.pardir + os.sep) or rel == os.pardir:
        raise CaffeishError(f"{where}: '{name}' is not inside the input folder {input_folder} (its output would "
                            "land outside the output folder)")
    return rel


def list_images(input_folder, list_file=None):
    """The images to process: (path relative to ``input_folder``, where it was named) pairs, from ``list_file``
    or a walk of ``input_folder``."""
    if list_file is None:
        writable = Image.registered_extensions()
        found = []
        for root, dirs, files in os.walk(input_folder):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                ext = os.path.splitext(name)[1].lower()
                if ext in IMAGE_EXTENSIONS and ext in writable and not name.startswith("."):
                    found.append((os.path.relpath(os.path.join(root, name), input_folder), os.path.join(root, name)))
        if not found:
            raise CaffeishError(f"holds no image files ({', '.join(IMAGE_EXTENSIONS)})", path=input_folder)
        return found
    try:
        with open(list_file, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise CaffeishError(f"cannot read the image list: {e.strerror or e}", path=list_file) from None
    except UnicodeDecodeError:
        raise CaffeishError("is not a text list of images", path=list_file) from None
    images = []
    for number, line in enumerate(lines, 1):
        parts = line.split()
        if parts:
            where = f"{list_file}:{number}"
            images.append((_relative(parts[0], input_folder, where), f"{where} ({parts[0]})"))
    if not images:
        raise CaffeishError("names no images", path=list_file)
    return images


def resize_and_crop_images(input_folder, output_folder, side=256, list_file=None, log_every=LOG_EVERY):
    """Resize and crop every image; returns (written, skipped).

    Each image is resized so that its shorter side is ``--output-side-length`` (default 256; the longer side
    scaled in proportion, rounded down) and its centre square cropped out, as the script's OpenCV path does
    (``cv2.imread`` in colour, ``cv2.resize`` bilinear, offsets ``(new - side) // 2``). The result is written
    under OUTPUT_FOLDER at the image's path relative to INPUT_FOLDER, in the format of its extension (JPEG at
    quality 95, OpenCV's default), each file atomically: an interrupted run leaves whole images only.

    The images are those a list file names (``--list``/``--input``: one per line, a path relative to
    INPUT_FOLDER, anything after it -- a label -- ignored), or every image file under INPUT_FOLDER. As in
    the script, an image that cannot be read is reported and skipped. Caffe's flags work as well:
    ``--input_folder``, ``--output_folder``, ``--output_side_length``.
    """
    if side < 1:
        raise CaffeishError(f"--output-side-length must be at least 1, not {side}")
    if not os.path.isdir(input_folder):
        raise CaffeishError("is not a folder of images" if os.path.exists(input_folder) else "no such folder",
                            path=input_folder)
    if os.path.abspath(input_folder) == os.path.abspath(output_folder):
        raise CaffeishError("the output folder is the input folder: the originals would be overwritten; give "
                            "another output folder", path=output_folder)
    images = list_images(input_folder, list_file)
    formats = {rel: _format(rel) for rel, _ in images}  # an unknown extension is refused before any work
    written = skipped = 0
    for rel, where in images:
        source = os.path.join(input_folder, rel)
        try:
            img = cio.read_image_chw_bgr(source, color=True)[::-1].transpose(1, 2, 0)  # H x W x RGB
        except CaffeishError as e:
            log.warning("Skipping %s: %s", where, e.reason)
            skipped += 1
            continue
        out = resize_and_crop(img, side)
        target = os.path.join(output_folder, rel)
        try:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with atomic_path(target, suffix=os.path.splitext(target)[1]) as tmp:
                fmt = formats[rel]
                Image.fromarray(out).save(tmp, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
        except (OSError, ValueError) as e:
            raise CaffeishError(f"cannot write the image: {getattr(e, 'strerror', None) or e}", path=target) from None
        written += 1
        if written % log_every == 0:
            log.info("Processed %d images.", written)
    if written == 0:
        raise CaffeishError(f"none of the {len(images)} images could be read (see the warnings above)",
                            path=list_file or input_folder)
    if written % log_every:
        log.info("Processed %d images.", written)
    return written, skipped


def _one(positional, option, what):
    if positional and option and os.path.abspath(positional) != os.path.abspath(option):
        raise CaffeishError(f"the {what} is given twice and differs: {positional} and --{what.replace(' ', '-')} "
                            f"{option}")
    if not (positional or option):
        raise CaffeishError(f"give the {what} (resize-and-crop INPUT_FOLDER OUTPUT_FOLDER)")
    return positional or option


@register_command("resize-and-crop")
@click.command()
@click.argument("input_arg", metavar="INPUT_FOLDER", required=False, type=click.Path())
@click.argument("output_arg", metavar="OUTPUT_FOLDER", required=False, type=click.Path())
@click.option("--output-side-length", default=256, type=int, show_default=True,
              help="The side of the square output images.")
@click.option("--list", "--input", "list_file", default=None, type=click.Path(dir_okay=False),
              help="A file naming the images, one per line, relative to INPUT_FOLDER (default: every image in it).")
@click.option("--input-folder", default=None, type=click.Path(), help="INPUT_FOLDER, as Caffe's flag.")
@click.option("--output-folder", default=None, type=click.Path(), help="OUTPUT_FOLDER, as Caffe's flag.")
def resize_and_crop_command(input_arg, output_arg, output_side_length, list_file, input_folder, output_folder):
    """Resize the images of INPUT_FOLDER so their shorter side is --output-side-length, crop the centre
    square, and write them to OUTPUT_FOLDER under the same relative paths (Caffe's resize_and_crop_images.py).
    """
    input_folder = _one(input_arg, input_folder, "input folder")
    output_folder = _one(output_arg, output_folder, "output folder")
    written, skipped = resize_and_crop_images(input_folder, output_folder, output_side_length, list_file)
    click.echo(f"{output_folder}: {written} images of {output_side_length} x {output_side_length}")
    if skipped:
        click.echo(f"skipped {skipped} unreadable image(s); see the warnings above", err=True)
