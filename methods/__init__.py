"""The built-in unlearning methods, registered as a plugin exactly as a third-party package would be."""
from mubench.api import hookimpl
from mubench.methods.badt import BadTeacher
from mubench.methods.cfk import CatastrophicForgettingK, ExactUnlearningK
from mubench.methods.cfw import ConfuseFineTune
from mubench.methods.ct import ConvolutionTranspose
from mubench.methods.dpo import IdkDPO
from mubench.methods.esd import ESD
from mubench.methods.fcs import ForgetContrastStrengthen
from mubench.methods.fisher import FisherForgetting
from mubench.methods.graddiff import GradDiff
from mubench.methods.iu import InfluenceUnlearning
from mubench.methods.kde import KnowledgeDistillationEntropy
from mubench.methods.l1sparse import L1Sparse
from mubench.methods.msg import MaskedSmallGradients
from mubench.methods.neggrad import NegGrad
from mubench.methods.ngplus import NegGradPlus
from mubench.methods.npo import NPO, SimNPO
from mubench.methods.prmq import PruneReinitQuantise
from mubench.methods.randlabel import RandLabel
from mubench.methods.references import FineTune, Original, Retrain
from mubench.methods.rmu import RMU
from mubench.methods.rni import ResetNoiseImprove
from mubench.methods.salun import SalUn
from mubench.methods.scrub import SCRUB
from mubench.methods.ssd import SSD
from mubench.methods.undial import UNDIAL
from mubench.methods.wga import WGA, SatImp


@hookimpl
def mubench_methods():
    return [
        # MU-Bench's five, ESD, and the references
        NegGrad, RandLabel, BadTeacher, SCRUB, SalUn, ESD, Retrain, Original, FineTune,
        # Deep Unlearn's roster
        NegGradPlus, L1Sparse, SSD, MaskedSmallGradients, ConvolutionTranspose, CatastrophicForgettingK, ExactUnlearningK,
        FisherForgetting, InfluenceUnlearning, ForgetContrastStrengthen, ConfuseFineTune, PruneReinitQuantise,
        KnowledgeDistillationEntropy, ResetNoiseImprove,
        # OpenUnlearning's language-model methods
        GradDiff, NPO, SimNPO, IdkDPO, RMU, UNDIAL, WGA, SatImp,
    ]
