"""Dataset base classes mirroring ``dassl.data.datasets`` (registry, ``Datum``, ``DatasetBase``)."""
import os.path as osp
import random
from collections import defaultdict

from .utils import Registry, check_availability, check_isfile

DATASET_REGISTRY = Registry("DATASET")


def build_dataset(cfg):
    avai_datasets = DATASET_REGISTRY.registered_names()
    check_availability(cfg.DATASET.NAME, avai_datasets)
    if cfg.VERBOSE:
        print("Loading dataset: {}".format(cfg.DATASET.NAME))
    return DATASET_REGISTRY.get(cfg.DATASET.NAME)(cfg)


class Datum:
    """One sample: image path, label, domain and class name (read-only).

    As in Dassl, the constructor checks that the image file exists.
    """

    def __init__(self, impath="", label=0, domain=0, classname=""):
        assert isinstance(impath, str)
        assert check_isfile(impath)
        self._impath = impath
        self._label = label
        self._domain = domain
        self._classname = classname

    @property
    def impath(self):
        return self._impath

    @property
    def label(self):
        return self._label

    @property
    def domain(self):
        return self._domain

    @property
    def classname(self):
        return self._classname

    def __repr__(self):
        return "Datum(impath={!r}, label={}, domain={}, classname={!r})".format(
            self._impath, self._label, self._domain, self._classname
        )


class DatasetBase:
    """Holds ``train_x`` / ``train_u`` / ``val`` / ``test`` lists of ``Datum``.

    ``num_classes``, ``lab2cname`` and ``classnames`` are derived from ``train_x`` (as in Dassl), so
    ``train_x`` must contain every class.
    """

    dataset_dir = ""
    domains = []

    def __init__(self, train_x=None, train_u=None, val=None, test=None):
        self._train_x = train_x
        self._train_u = train_u
        self._val = val
        self._test = test
        self._num_classes = self.get_num_classes(train_x)
        self._lab2cname, self._classnames = self.get_lab2cname(train_x)

    @property
    def train_x(self):
        return self._train_x

    @property
    def train_u(self):
        return self._train_u

    @property
    def val(self):
        return self._val

    @property
    def test(self):
        return self._test

    @property
    def lab2cname(self):
        return self._lab2cname

    @property
    def classnames(self):
        return self._classnames

    @property
    def num_classes(self):
        return self._num_classes

    @staticmethod
    def get_num_classes(data_source):
        label_set = set()
        for item in data_source:
            label_set.add(item.label)
        return max(label_set) + 1

    @staticmethod
    def get_lab2cname(data_source):
        container = set()
        for item in data_source:
            container.add((item.label, item.classname))
        mapping = {label: classname for label, classname in container}
        labels = list(mapping.keys())
        labels.sort()
        classnames = [mapping[label] for label in labels]
        return mapping, classnames

    def check_input_domains(self, source_domains, target_domains):
        assert len(source_domains) > 0, "source_domains (list) is empty"
        assert len(target_domains) > 0, "target_domains (list) is empty"
        self.is_input_domain_valid(source_domains)
        self.is_input_domain_valid(target_domains)

    def is_input_domain_valid(self, input_domains):
        for domain in input_domains:
            if domain not in self.domains:
                raise ValueError(
                    "Input domain must belong to {}, but got [{}]".format(self.domains, domain)
                )

    def download_data(self, url, dst, from_gdrive=True):
        import tarfile
        import zipfile

        if not osp.exists(osp.dirname(dst)):
            import os

            os.makedirs(osp.dirname(dst))
        if from_gdrive:
            import gdown

            gdown.download(url, dst, quiet=False)
        else:
            raise NotImplementedError
        print("Extracting file ...")
        if dst.endswith(".zip"):
            with zipfile.ZipFile(dst, "r") as zf:
                zf.extractall(osp.dirname(dst))
        elif dst.endswith(".tar"):
            with tarfile.open(dst, "r:") as tf:
                tf.extractall(osp.dirname(dst))
        elif dst.endswith(".tar.gz"):
            with tarfile.open(dst, "r:gz") as tf:
                tf.extractall(osp.dirname(dst))
        else:
            raise NotImplementedError
        print("File extracted to {}".format(osp.dirname(dst)))

    def generate_fewshot_dataset(self, *data_sources, num_shots=-1, repeat=False):
        """Sample ``num_shots`` items per class from each source (Python ``random``; seeded by
        ``set_random_seed``). Returns one list for one source, else a list of lists."""
        if num_shots < 1:
            if len(data_sources) == 1:
                return data_sources[0]
            return data_sources

        print("Creating a {}-shot dataset".format(num_shots))
        output = []
        for data_source in data_sources:
            tracker = self.split_dataset_by_label(data_source)
            dataset = []
            for label, items in tracker.items():
                if len(items) >= num_shots:
                    sampled_items = random.sample(items, num_shots)
                else:
                    if repeat:
                        sampled_items = random.choices(items, k=num_shots)
                    else:
                        sampled_items = items
                dataset.extend(sampled_items)
            output.append(dataset)

        if len(output) == 1:
            return output[0]
        return output

    def split_dataset_by_label(self, data_source):
        output = defaultdict(list)
        for item in data_source:
            output[item.label].append(item)
        return output

    def split_dataset_by_domain(self, data_source):
        output = defaultdict(list)
        for item in data_source:
            output[item.domain].append(item)
        return output
