// Shim: ProcessGroupGloo.hpp includes this but uses nothing from it.
#pragma once
