"""The built-in unlearning methods, registered as a plugin exactly as a third-party package would be."""
from mubench.api import hookimpl
from mubench.methods.badt import BadTeacher
from mubench.methods.esd import ESD
from mubench.methods.l1sparse import L1Sparse
from mubench.methods.neggrad import NegGrad
from mubench.methods.ngplus import NegGradPlus
from mubench.methods.randlabel import RandLabel
from mubench.methods.references import FineTune, Original, Retrain
from mubench.methods.salun import SalUn
from mubench.methods.scrub import SCRUB
from mubench.methods.ssd import SSD


@hookimpl
def mubench_methods():
    return [NegGrad, NegGradPlus, L1Sparse, SSD, RandLabel, BadTeacher, SCRUB, SalUn, ESD, Retrain, Original, FineTune]
